"""Inference at each precision, side by side: generation tokens/s, weights MiB and validation loss.

For each precision (gptcore.precision: float32, bfloat16, float16 cast; int8 weight-only with torchao), a fresh
copy of the checkpoint's model at that precision:
- validation loss: the mean over the same fixed batches of the corpus's validation split for every precision
  (drawn once, from a fixed seed), and its difference from float32's (float32 is always measured: the baseline);
- generation speed: one untimed warm-up generation (first-use costs: kernels, allocator, thread pools), then
  `repeat` timed generations of max_new_tokens tokens, each from the same prompt (the first tokens of the
  validation split) with a generator seeded the same; never stopped early at an end-of-sequence token, so
  every run makes the same number of tokens. Reported: the median tokens/s and its IQR, on threads fixed for
  the whole run (--threads, recorded);
- weights size: gptcore.precision.weights_bytes (int8: the int8 data plus the scales, as stored).

inference.json: {"environment": {... as matmul.json's, plus torchao's version}, "settings": {...},
                 "checkpoint": "...", "data": "...", "results": [one object per row of inference.csv]}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from benchmarks.progress import Mode, bar, line
from benchmarks.stats import quartiles
from gptcore import hardware as hw
from gptcore.checkpoint import Checkpoint
from gptcore.data import TokenData
from gptcore.errors import UserError
from gptcore.precision import at_precision, check_precision, weights_bytes

PROMPT_TOKENS = 16  # prompt length for generation: a short context, as a user's prompt would be
COLUMNS = {"precision": "precision", "tokens_per_s": "tokens/s", "tokens_per_s_iqr": "IQR tokens/s",
           "ms_per_token": "ms/token", "weights_MiB": "weights MiB", "val_loss": "val loss",
           "val_loss_delta": "Δ val loss vs float32"}


@dataclass(frozen=True)
class Settings:
    """What every precision is measured with."""

    max_new_tokens: int = 200
    repeat: int = 5
    eval_batches: int = 20
    seed: int = 1337


def vocab_fits(ckpt: Checkpoint, data: TokenData) -> bool:
    """Whether the corpus's token ids mean the same to the checkpoint (its vocabulary, maybe plus an EOS token)."""
    ours, theirs = _stored(ckpt.tokenizer), _stored(data.tokenizer)
    if ours == theirs:
        return True
    with_eos = getattr(data.tokenizer, "with_eos", None)  # a fine-tuned model's vocabulary: the corpus's + EOS
    return with_eos is not None and getattr(data.tokenizer, "eos_id", 0) is None and _stored(with_eos()) == ours


def _stored(tokenizer: Any) -> Any:
    to_dict = getattr(tokenizer, "to_dict", None)
    return to_dict() if to_dict is not None else tokenizer.to_json()


def val_batches(data: TokenData, ckpt: Checkpoint, settings: Settings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation windows every precision is scored on: drawn once from a fixed seed."""
    block, batch = ckpt.model_cfg.block_size, ckpt.train_cfg.batch_size
    data.check_block_size(block)
    gen = torch.Generator().manual_seed(settings.seed)
    return [data.get_batch("val", batch, block, gen) for _ in range(settings.eval_batches)]


@torch.no_grad()
def val_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> float:
    """Mean cross-entropy over the batches (the model computes it in float32 from its logits)."""
    losses = [model(x.to(device), y.to(device))[1].float().item() for x, y in batches]
    return sum(losses) / len(losses)


def time_generation(model: Any, prompt: torch.Tensor, settings: Settings, device: torch.device) -> list[float]:
    """Seconds of each timed generation of max_new_tokens tokens, after one untimed warm-up."""

    def generate() -> None:
        gen = torch.Generator(device=device).manual_seed(settings.seed)
        model.generate(prompt, settings.max_new_tokens, generator=gen)  # no eos_id: always the full length

    generate()
    seconds = []
    for _ in range(settings.repeat):
        hw.synchronize(device)
        t0 = time.perf_counter()
        generate()
        hw.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def measure(ckpt: Checkpoint, precision: str, batches: list, prompt: torch.Tensor, settings: Settings,
            device: torch.device) -> dict[str, Any]:
    """One precision's row: speed, size and loss."""
    model = at_precision(ckpt.build_model(device), precision, device)
    loss = val_loss(model, batches, device)
    rates = [settings.max_new_tokens / s for s in time_generation(model, prompt, settings, device)]
    q1, med, q3 = quartiles(rates)
    return {"precision": precision, "tokens_per_s": med, "tokens_per_s_iqr": q3 - q1,
            "ms_per_token": 1e3 / med, "weights_MiB": weights_bytes(model) / 2**20, "val_loss": loss,
            "repeats": len(rates), "threads": torch.get_num_threads(), "device": str(device)}


def run(ckpt: Checkpoint, data: TokenData, precisions: list[str], settings: Settings, device: torch.device,
        progress: Mode = "off") -> pd.DataFrame:
    """Every precision (float32 first, always: the baseline of the loss deltas), one row each."""
    precisions = ["float32", *(p for p in dict.fromkeys(precisions) if p != "float32")]
    for p in precisions:  # all refused before any measurement
        check_precision(p, device)
    if not vocab_fits(ckpt, data):
        raise UserError(f"--data {data.source}: its vocabulary is not the checkpoint's (trained on another corpus?)")
    batches = val_batches(data, ckpt, settings)
    prompt = torch.from_numpy(data.tokens("val")[:min(PROMPT_TOKENS, ckpt.model_cfg.block_size)].astype("int64"))
    prompt = prompt.view(1, -1).to(device)
    rows = []
    for i, p in enumerate(bar(precisions, progress, "inference", "precision"), 1):
        # measure() builds a fresh model from the checkpoint's weights: casting and quantising change a model
        # in place, never the checkpoint's tensors (load_state_dict copies them).
        rows.append(measure(ckpt, p, batches, prompt, settings, device))
        line(progress, f"inference {i}/{len(precisions)}: {p}: {rows[-1]['tokens_per_s']:.4g} tokens/s, "
                       f"val loss {rows[-1]['val_loss']:.4f}")
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("val_loss") + 1, "val_loss_delta", df["val_loss"] - df["val_loss"].iloc[0])
    return df


def markdown(df: pd.DataFrame) -> str:
    """The table a person reads: one row per precision."""
    shown = df[list(COLUMNS)].rename(columns=COLUMNS)
    # Per column: whole tokens/s, and the loss to 4 decimals with its sign (a delta of 1e-5 reads as +0.0000).
    return shown.to_markdown(index=False, floatfmt=("", ".1f", ".1f", ".3f", ".3f", ".4f", "+.4f"))


def environment(device: torch.device) -> dict[str, Any]:
    """matmul.json's environment (CPU, BLAS, threads, torch, GPU) plus torchao's version."""
    from benchmarks.matmul import environment as env

    out = env([str(device)] if device.type == "cuda" else [])
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["torchao"] = version("torchao")
    except PackageNotFoundError:  # not installed: no int8 row was asked for
        out["torchao"] = None
    return out
