"""Training-step throughput of the gptcore GPT, through gptcore.train.train itself (what the tuner runs)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from benchmarks.progress import Mode, as_mode, bar, line
from gptcore import hardware as hw
from gptcore.config import from_name
from gptcore.data import TokenData
from gptcore.model import GPT
from gptcore.train import train


def run_one(preset: str, device: str, dtype: str, data: TokenData, *, steps: int, warmup: int) -> dict[str, Any]:
    """A warm-up run, then a timed run of `steps` steps; one table row."""
    overrides = dict(device=device, dtype=dtype, eval_iters=1, eval_interval=10**9, dropout=0.0)
    m, t = from_name(preset, max_iters=warmup, **overrides)
    m = m.with_vocab(data.vocab_size)
    train(m, t, data, progress=False)  # first-use costs (kernels, allocator, thread pools) stay out of the timing
    m, t = from_name(preset, max_iters=steps, **overrides)
    m = m.with_vocab(data.vocab_size)
    r = train(m, t, data, progress=False)
    flops_per_token = GPT.flops_per_token(r.model, m.block_size)
    mem = r.peak_memory
    return {
        "config": preset, "device": device, "dtype": dtype, "batch": t.batch_size, "block": m.block_size,
        "params_M": r.n_params / 1e6, "steps": r.steps,
        # From the timed rate: train() keeps its own first WARMUP_STEPS steps out of the clock.
        "ms_per_step": 1e3 * t.batch_size * m.block_size * t.grad_accum_steps / r.tokens_per_s,
        "tokens_per_s": r.tokens_per_s, "achieved_tflops": flops_per_token * r.tokens_per_s / 1e12,
        "mfu": r.mfu, "peak_allocated_MiB": (mem.get("peak_allocated_bytes") or 0) / 2**20 or None,
        "peak_rss_MiB": mem["peak_rss_bytes"] / 2**20, "threads": torch.get_num_threads(),
    }


def run(presets: list[str], devices: list[str], dtypes: dict[str, list[str]], data: TokenData, *, steps: int = 20,
        warmup: int = 3, progress: bool | Mode = True) -> pd.DataFrame:
    """Every preset x device x dtype (a bar, or a line per case: see benchmarks.progress)."""
    mode = as_mode(progress)
    cases = [(p, d, dt) for p in presets for d in devices for dt in dtypes[d]]
    rows = []
    for i, (preset, device, dtype) in enumerate(bar(cases, mode, "train-step", "case"), 1):
        hw.check_dtype(torch.device(device), dtype)
        rows.append(run_one(preset, device, dtype, data, steps=steps, warmup=warmup))
        line(mode, f"train-step {i}/{len(cases)}: {preset} {device} {dtype}: "
                   f"{rows[-1]['tokens_per_s'] / 1e3:.3g} k tokens/s")
    return pd.DataFrame(rows)
