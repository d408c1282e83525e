"""Memory of one training step, before it runs: an analytic estimate, and the calibration that turns tensor bytes
into what the device really holds.

Torch-free on purpose: the tuner's parent (which never imports torch) fits and applies the calibration, and
uses the estimate. The exact figure, the traced peak of the real step on fake tensors, is gptcore.memtrace.

Shapes: B = batch, T = block, C = n_embed, nh = n_head, L = n_layer, V = vocab, P = parameters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gptcore.config import ModelConfig, TrainConfig
from gptcore.errors import UserError

FLOAT32 = 4
# Saved for backward per layer and token, in float32 elements per unit of C, counted from the autograd graph
# (torch.autograd.graph.saved_tensors_hooks on the course's block): the block input, q/k/v, the attention
# output, its re-assembled heads, LayerNorm inputs and outputs and the 4C ReLU output make 12 C. Dropout adds
# its masks and outputs (2 C), and sends attention through SDPA's math kernel, which keeps three (nh, T, T)
# float matrices (scores, probabilities, dropped probabilities) per sequence.
ACT_PER_C = 12
ACT_PER_C_DROPOUT = 14
ATT_MATRICES_DROPOUT = 3
# The head: ln_f's input and output (2 C) and the logits, their float32 copy for the loss and its gradient
# (about 3 V per token at the start of backward).
HEAD_PER_C, HEAD_PER_V = 2, 3
# Backward's temporaries at the peak: the gradients of the feed-forward's 4C hidden layer (two of them) and of
# its output, per token.
TEMP_PER_C = 9
# Calibration.fit draws a slope from this many measured runs; fewer give ratio 1 and the smallest overhead.
MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class StepMemory:
    """Tensor bytes at the peak of one training step, in total and by what holds them."""

    peak_bytes: int
    parts: dict[str, int] = field(default_factory=dict)  # parameters, gradients, optimizer, activations, ...
    # What lives the whole run, allocated once (weights, buffers, AdamW's state): the rest of the peak is freed and
    # allocated again every step. 0: unknown (treated as all transient).
    resident_bytes: int = 0
    # Transient bytes at the peak in allocations large enough that the allocator returns them when freed (on the
    # CPU, glibc's mmapped ones: gptcore.memtrace.LARGE_FROM); they cost what they hold. 0: none or unknown.
    large_bytes: int = 0
    method: str = "traced"  # "traced" (gptcore.memtrace) or "analytic" (estimate_step below)
    seconds: float = 0.0  # what finding it cost

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def num_params(model: ModelConfig) -> int:
    """The GPT's parameter count, from its config alone (gptcore.model.GPT builds exactly this many)."""
    C, V, L, T, b = model.n_embed, model.vocab_size, model.n_layer, model.block_size, int(model.bias)
    per_layer = (3 * C * C + 3 * C * b) + (C * C + C * b)  # qkv and the output projection
    per_layer += (4 * C * C + 4 * C * b) + (4 * C * C + C * b)  # the feed-forward pair
    per_layer += 2 * (C + C * b)  # two LayerNorms
    return V * C + T * C + L * per_layer + (C + C * b) + (C * V + V * b)


def estimate_step(model: ModelConfig, train: TrainConfig) -> StepMemory:
    """Analytic peak of a training step: weights and AdamW state, plus activations at the start of backward.

    A cross-check on the trace and a fast first bracket (tune max-batch); float32 activations, so under
    bfloat16/float16 autocast it errs high.
    """
    B, T, C, L, V = train.batch_size, model.block_size, model.n_embed, model.n_layer, model.vocab_size
    P = num_params(model)
    weights = P * FLOAT32
    optimizer = 2 * P * FLOAT32  # AdamW's exp_avg and exp_avg_sq, float32 like the weights
    tokens = B * T
    per_layer = tokens * C * (ACT_PER_C_DROPOUT if model.dropout > 0 else ACT_PER_C)
    if model.dropout > 0:
        per_layer += ATT_MATRICES_DROPOUT * B * model.n_head * T * T
    activations = FLOAT32 * (L * per_layer + tokens * (HEAD_PER_C * C + HEAD_PER_V * V))
    # The gradients appear layer by layer while the activations are freed; at the start of backward only the
    # head's are there. The peak is taken there.
    gradients = (C * V + V) * FLOAT32
    temporary = FLOAT32 * tokens * TEMP_PER_C * C
    parts = {"parameters": weights, "optimizer": optimizer, "activations": activations, "gradients": gradients,
             "temporary": temporary}
    return StepMemory(peak_bytes=sum(parts.values()), parts=parts, resident_bytes=weights + optimizer,
                      method="analytic")


@dataclass(frozen=True)
class Calibration:
    """Device bytes = baseline + exact + ratio x the other transient tensor bytes + overhead, fitted from measured
    peaks.

    The baseline is what the process holds before training (measured in each trial: on the CPU the data segment
    the memory limit counts, on CUDA zero). Exact bytes cost what they hold: the resident tensors (weights, AdamW
    state, allocated once) and, on the CPU, transient ones large enough that glibc mmaps them and unmaps them when
    freed (StepMemory.large_bytes). The other transient tensors (activations, temporaries, gradients), freed and
    allocated again every step from a heap that fragments, cost `ratio` times what they hold.
    Chosen on 87 CPU trials of the medium space here (leave-one-out relative error median 2.7 %, 90th percentile
    5.9 %, largest 19 %; one ratio on all transient bytes: 2.5 %, 5.7 %, but largest 32 %: it misses the
    large-tensor configurations that decide skips near the limit; one ratio on all bytes: 3.1 %, 8.2 %, 23 %.
    docs/memory.md).
    Uncalibrated (no runs yet) it predicts the tensors alone: a lower bound, so that a skip before any evidence is
    never a false one.
    """

    ratio: float = 1.0
    overhead_bytes: float = 0.0
    points: int = 0

    def predict(self, traced_bytes: int, baseline_bytes: int = 0, exact_bytes: int = 0) -> int:
        """Predicted device bytes of a step whose traced tensor peak is `traced_bytes`, `exact_bytes` of which
        cost what they hold (0: all of it fragments)."""
        return int(baseline_bytes + exact_bytes + self.ratio * (traced_bytes - exact_bytes) + self.overhead_bytes)

    @staticmethod
    def exact(memory: dict[str, Any]) -> int:
        """The exact bytes of a traced step (StepMemory as a dict): resident plus large transient."""
        return int(memory.get("resident_bytes") or 0) + int(memory.get("large_bytes") or 0)

    @classmethod
    def fit(cls, runs: Sequence[tuple[int, int]]) -> Calibration:
        """Fit from (traced bytes less the exact ones, measured bytes beyond the baseline and the exact ones) of
        runs that trained.

        Fewer than MIN_FIT_POINTS runs: ratio 1 and the smallest overhead seen (it never over-predicts those
        runs). Then weighted least squares on relative error, since a limit is a relative matter: ratio at least 1
        (the tensors themselves are there).
        """
        runs = [(t, m) for t, m in runs if t > 0 and m > 0]
        if not runs:
            return cls()
        if len(runs) < MIN_FIT_POINTS or len({t for t, _ in runs}) < 2:
            return cls(1.0, max(0.0, min(m - t for t, m in runs)), len(runs))
        # minimise sum(((a t + b - m) / m)^2): linear least squares in (a, b) with rows scaled by 1/m
        sw = sum(1 / m**2 for _, m in runs)
        st = sum(t / m**2 for t, m in runs)
        stt = sum(t * t / m**2 for t, m in runs)
        sm = sum(1 / m for _, m in runs)
        stm = sum(t / m for t, m in runs)
        det = stt * sw - st * st
        ratio = (stm * sw - st * sm) / det if det > 0 else 1.0
        if not math.isfinite(ratio) or ratio < 1.0:
            ratio = 1.0
        overhead = (sm - ratio * st) / sw
        return cls(ratio, overhead, len(runs))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with the study)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """Inverse of to_dict; None or {} is the uncalibrated default."""
        return cls(**data) if data else cls()




# --- refusing a model that cannot fit, before allocating it: `n_embed: 65536` in a config failed deep inside torch,
# `n_layer: 1000000` built Python objects for minutes before running out.

# The Python objects of one transformer block (its modules and parameter tensors): about 40 KB measured on CPU
# torch 2.x; the lower figure keeps the check a lower bound, so it never refuses a model that would fit.
BLOCK_OBJECT_BYTES = 32 * 2**10


def host_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model: ModelConfig, where: str, *, training: bool, device: str = "cpu",
               device_bytes: int | None = None) -> None:
    """Refuse, before anything is allocated, a GPT that cannot fit: a UserError naming `where`, the predicted bytes
    and what the device has.

    The prediction is a lower bound: the weights (training: also their gradients and AdamW's two moments) on
    `device` (which holds `device_bytes`; None: the host's memory), and the blocks' Python objects on the host.
    """
    tensors = num_params(model) * FLOAT32 * (4 if training else 1)
    objects = model.n_layer * BLOCK_OBJECT_BYTES
    host = host_memory_bytes()
    on_host = device_bytes is None
    checks = [(tensors + objects if on_host else objects, host, "this machine's memory")]
    if not on_host:
        checks.append((tensors, device_bytes, f"{device}'s memory"))
    what = "weights, gradients and AdamW state" if training else "weights"
    for need, have, name in checks:
        if have is not None and need > have:
            raise UserError(f"{where}: a model of n_layer={model.n_layer}, n_embed={model.n_embed}, "
                            f"vocab_size={model.vocab_size} needs at least {_gib(need)} ({what}, "
                            f"{num_params(model):,} parameters), more than the {_gib(have)} of {name}")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
