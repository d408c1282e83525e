"""Compiling the training step: none (eager), default (torch.compile), graphs (CUDA graphs) or auto.

`graphs` is torch.compile(mode="reduce-overhead") on the model, not a hand-captured whole step. In torch 2.13
that mode is inductor's "triton.cudagraphs" option (torch/_inductor/__init__.py, list_mode_options): the
compiled forward and backward run as CUDA graph trees (torch/_inductor/cudagraph_trees.py), which copy inputs into
static buffers, feed dropout's Philox seed and offset in as graph inputs (so every replay draws fresh masks), and
warm up, record and replay by themselves. What stays eager per step is the fused AdamW (a handful of launches for
all parameters: the lr stays a Python float set per step) and clip_grad_norm_'s foreach kernels. Capturing the
whole step by hand would save those few launches but needs a capturable AdamW with the lr as a device tensor,
a registered generator for dropout, static batch buffers and a fixed grad-accumulation structure: more code and
more ways to train wrongly, for a small share of a step. The CUDA-graph path has one rule the loop keeps: a graph
output (the loss) is overwritten by the next replay, so train_step clones it before buffering it.

`auto` compiles only when the run is long enough for the expected saving to exceed the expected compile time,
so a short run is never slower in wall time than eager because of compilation. It measures the eager step during
the warm-up steps and uses the speedups and compile times in ESTIMATES (docs/compile.md says where they come
from; scripts/gpu_check.sh measures the CUDA ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptcore.errors import UserError

MODES = ("none", "default", "graphs")  # what `auto` resolves to; gptcore.config.COMPILE_MODES adds "auto"
# Steps whose time is compiling or capturing rather than training: torch.compile compiles the forward and the
# backward during the first step; CUDA graph trees run the compiled step once more to warm up, then record on
# the next call (the first replay is the third step).
CAPTURE_STEPS = {"none": 0, "default": 1, "graphs": 2}


@dataclass(frozen=True)
class Estimate:
    """What compiling is expected to bring: eager step time / compiled step time, and seconds to compile."""

    speedup: float
    compile_seconds: float


# (device type, mode) -> Estimate; a pair not listed is never chosen by auto.
# CPU: measured on this project's 2-core machine (docs/compile.md): torch.compile's default mode trained the baby
# and small-space configurations at 0.70x-0.97x of eager's speed and took half a minute or more to compile, so
# auto never compiles on the CPU.
# CUDA: from the H200 figures of issue #20 (gptcore eager 1.18 M tokens/s, default 1.77 M: 1.5x; nanoGPT's loop
# with reduce-overhead 3.0x eager, taken lower here until gpu_check.sh measures gptcore's own); compile seconds
# are a cold cache's, rounded up.
ESTIMATES: dict[tuple[str, str], Estimate] = {
    ("cuda", "default"): Estimate(speedup=1.5, compile_seconds=60.0),
    ("cuda", "graphs"): Estimate(speedup=2.2, compile_seconds=75.0),
}


@dataclass(frozen=True)
class Choice:
    """The mode a run compiles with, and one line saying why."""

    mode: str
    reason: str


def check_mode(mode: str, device: torch.device) -> None:
    """Refuse a mode this device cannot run: graphs needs CUDA; default on the CPU needs a C++ compiler."""
    if mode == "graphs" and device.type != "cuda":
        raise UserError(f"--compile graphs needs a CUDA device (CUDA graphs), not {device.type}; "
                        f"use default, none or auto")
    if mode == "default" and device.type == "cpu":
        missing = _cpu_compiler_missing()
        if missing:
            raise UserError(f"--compile default on the CPU needs a C++ compiler ({missing}); install g++ or use "
                            f"--compile none")


def _cpu_compiler_missing() -> str | None:
    """Why inductor would find no C++ compiler for CPU kernels (None: it finds one), asked before the first step."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # the search inductor itself will run

        get_cpp_compiler()
    except Exception as exc:  # torch raises its own InvalidCxxCompiler, among others
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module a training step calls: the model itself (none) or its torch.compile'd wrapper."""
    if mode == "none":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "graphs" else None)


def expected_saving(eager_seconds: float, estimate: Estimate) -> float:
    """Wall seconds saved by compiling work that takes `eager_seconds` eagerly (negative: compiling costs)."""
    return eager_seconds - eager_seconds / estimate.speedup - estimate.compile_seconds


def choose(device: torch.device, step_seconds: float, steps_left: int | None,
           seconds_left: float | None) -> Choice:
    """auto: the mode saving the most wall time on the rest of the run, or none when none saves any.

    The rest of the run is `steps_left` eager steps of `step_seconds` or `seconds_left` of training, whichever
    ends first (None: no such limit). A time budget is read as the same work done sooner, the stricter reading:
    compiling must pay back its compile time on the eager run's tokens, not merely add tokens.
    """
    limits = [s for s in (steps_left * step_seconds if steps_left is not None else None, seconds_left)
              if s is not None]
    eager = max(0.0, min(limits))
    candidates = {m: est for (dev, m), est in ESTIMATES.items() if dev == device.type}
    if not candidates:
        return Choice("none", f"auto: none, torch.compile is not expected to pay on {device.type} "
                              f"(docs/compile.md)")
    mode, est = max(candidates.items(), key=lambda item: expected_saving(eager, item[1]))
    saving = expected_saving(eager, est)
    what = f"~{eager:.0f} s of eager steps left"
    if saving <= 0:
        return Choice("none", f"auto: none, {what}: compiling ({mode}, ~{est.speedup:.1f}x after "
                              f"~{est.compile_seconds:.0f} s) would not pay back its compile time")
    return Choice(mode, f"auto: {mode}, {what}: ~{est.speedup:.1f}x faster after ~{est.compile_seconds:.0f} s "
                        f"of compiling saves ~{saving:.0f} s")
