"""Training-step throughput of the gptcore GPT, through gptcore.train.train itself (what the tuner runs).

Every preset x architecture x device x dtype x compile mode is one row: tokens/s and ms/step over the timed
steps, MFU where the GPU's peak is known, and the seconds the run spent compiling (outside the timed steps, as
train() books them). The "nanogpt" architecture is the preset's shape with nanoGPT's block (pre-norm, GELU, no
bias), so figures compare with published nanoGPT ones; "course" is the preset as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.progress import Mode, as_mode, bar, line
from benchmarks.stats import contended, meter
from gptcore import hardware as hw
from gptcore.compiling import CAPTURE_STEPS
from gptcore.config import from_name
from gptcore.data import TokenData
from gptcore.files import atomic_write, atomic_write_text
from gptcore.model import GPT
from gptcore.train import WARMUP_STEPS, train

ARCHS: dict[str, dict[str, Any]] = {
    "course": {},
    "nanogpt": dict(norm="pre", activation="gelu", bias=False),
}
COMPILE = ("none", "default", "graphs")
# Corners and middle of the tuner's small (CPU) search space, on baby's training settings: what a CPU trial trains.
SMALL_SPACE: dict[str, dict[str, Any]] = {
    "small-min": dict(batch_size=4, block_size=16, n_embed=64, n_head=1, n_layer=1),
    "small-mid": dict(batch_size=16, block_size=64, n_embed=128, n_head=4, n_layer=2),
    "small-max": dict(batch_size=32, block_size=128, n_embed=256, n_head=8, n_layer=4),
}
CONFIGS = ("tiny", "baby", "course-default", "course", "gpu", *SMALL_SPACE)


def _config(name: str, **overrides: Any):
    """(model, train) configs of a gptcore preset or of a point of the small space."""
    if name in SMALL_SPACE:
        return from_name("baby", **{**SMALL_SPACE[name], **overrides})
    return from_name(name, **overrides)


def run_one(preset: str, device: str, dtype: str, data: TokenData, *, steps: int, warmup: int,
            compile: str = "none", arch: str = "course", dropout: float | None = 0.0) -> dict[str, Any]:
    """A warm-up run (eager only: a compiled run's capture steps are its warm-up), then `steps` timed steps.

    dropout: None keeps the preset's (nanoGPT's shakespeare_char trains with 0.2; dropout costs time).
    """
    overrides = dict(device=device, dtype=dtype, eval_iters=1, eval_interval=10**9, compile=compile, **ARCHS[arch],
                     **({} if dropout is None else {"dropout": dropout}))
    if compile == "none":  # first-use costs (kernels, allocator, thread pools) stay out of the timing
        m, t = _config(preset, max_iters=warmup, **overrides)
        train(m.with_vocab(data.vocab_size), t, data, progress=False)
    # train() keeps its own capture and warm-up steps out of the clock: run them on top of the timed steps.
    m, t = _config(preset, max_iters=steps + CAPTURE_STEPS[compile] + WARMUP_STEPS, **overrides)
    m = m.with_vocab(data.vocab_size)
    r = train(m, t, data, progress=False)
    flops_per_token = GPT.flops_per_token(r.model, m.block_size)
    mem = r.peak_memory
    return {
        "config": preset, "arch": arch, "device": device, "dtype": dtype, "compile": compile, "dropout": m.dropout,
        "batch": t.batch_size, "block": m.block_size, "params_M": r.n_params / 1e6, "steps": steps,
        "ms_per_step": 1e3 * t.batch_size * m.block_size * t.grad_accum_steps / r.tokens_per_s,
        "tokens_per_s": r.tokens_per_s, "achieved_tflops": flops_per_token * r.tokens_per_s / 1e12,
        "mfu": r.mfu, "compile_s": r.compile_seconds,
        "peak_allocated_MiB": (mem.get("peak_allocated_bytes") or 0) / 2**20 or None,
        "peak_rss_MiB": mem["peak_rss_bytes"] / 2**20, "threads": torch.get_num_threads(),
    }


def cases(presets: list[str], devices: list[str], dtypes: dict[str, list[str]], compile_modes: list[str],
          archs: list[str]) -> list[tuple[str, str, str, str, str]]:
    """(preset, arch, device, dtype, compile) for every combination a device can run (graphs: CUDA only)."""
    return [(p, a, d, dt, c) for p in presets for a in archs for d in devices for dt in dtypes[d]
            for c in compile_modes if c != "graphs" or d.startswith("cuda")]


def run(presets: list[str], devices: list[str], dtypes: dict[str, list[str]], data: TokenData, *, steps: int = 20,
        warmup: int = 3, progress: bool | Mode = True, compile_modes: list[str] | None = None,
        archs: list[str] | None = None, dropout: float | None = 0.0) -> pd.DataFrame:
    """Every case (a bar, or a line per case: see benchmarks.progress); Ctrl-C keeps the finished ones."""
    mode = as_mode(progress)
    todo = cases(presets, devices, dtypes, compile_modes or ["none"], archs or ["course"])
    rows = []
    try:
        for i, (preset, arch, device, dtype, compile) in enumerate(bar(todo, mode, "train-step", "case"), 1):
            hw.check_dtype(torch.device(device), dtype)
            watch = meter(torch.get_num_threads())  # a neighbour on the benchmark's cores is flagged, not hidden
            row = run_one(preset, device, dtype, data, steps=steps, warmup=warmup, compile=compile, arch=arch,
                          dropout=dropout)
            measure = watch.stop()
            rows.append({**row, "others_cores": measure["others_cores"], "contended": contended(measure, device)})
            line(mode, f"train-step {i}/{len(todo)}: {preset} {arch} {device} {dtype} {compile}: "
                       f"{rows[-1]['tokens_per_s'] / 1e3:.3g} k tokens/s")
    except KeyboardInterrupt:
        line("lines" if mode != "off" else mode, f"train-step: interrupted; keeping {len(rows)} finished case(s)")
        if not rows:
            raise
    return pd.DataFrame(rows)


def write(df: pd.DataFrame, env: dict[str, Any], out: Path) -> list[Path]:
    """train_step.csv, train_step.json ({"environment", "results"}) and train_step.png."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": env, "results": json.loads(df.to_json(orient="records", double_precision=15))}
    return [atomic_write(out / "train_step.csv", lambda tmp: df.to_csv(tmp, index=False)),
            atomic_write_text(out / "train_step.json", json.dumps(doc, indent=1, default=str) + "\n"),
            plot(df, out / "train_step.png")]


def plot(df: pd.DataFrame, path: Path) -> Path:
    """train_step.png: tokens/s per case, one bar per compile mode side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    df = df.assign(case=df["config"] + " " + df["arch"] + "\n" + df["device"] + " " + df["dtype"])
    table = df.pivot_table(index="case", columns="compile", values="tokens_per_s", sort=False)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(table)), 4))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("tokens/s (timed steps)")
    ax.set_title("gptcore training step by compile mode")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
