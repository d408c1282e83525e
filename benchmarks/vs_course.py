"""gptcore against the course's own code, in one run on one machine: training tokens/s and batches/s.

Both models get the same config, the same batches, the same AdamW and the same training step; rounds
alternate between the two so that drift on a shared machine hits both alike. Ratios, not absolute times,
are the result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from benchmarks.course_reference import CourseReader, GPTLanguageModel
from benchmarks.progress import Mode, as_mode, bar, line
from benchmarks.stats import quartiles
from gptcore.config import ModelConfig, TrainConfig
from gptcore.data import TokenData
from gptcore.errors import UserError
from gptcore.hardware import autocast
from gptcore.model import GPT
from gptcore.train import configure_optimizer


def build_pair(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.nn.Module]:
    """gptcore's GPT and the course's GPTLanguageModel with the same shape."""
    torch.manual_seed(seed)
    ours = GPT(cfg)
    torch.manual_seed(seed)
    course = GPTLanguageModel(cfg.vocab_size, cfg.n_embed, cfg.n_head, cfg.n_layer, cfg.block_size, cfg.dropout)
    return {"gptcore": ours, "course": course}


def make_step(model: torch.nn.Module, dtype: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step as the course writes it (forward, zero_grad, backward, AdamW step).

    gptcore's model gets gptcore's optimizer set-up (decay on matrices only), the course's model the
    course's plain AdamW; everything else is the same.
    """
    device = torch.device("cpu")
    if isinstance(model, GPT):
        opt = configure_optimizer(model, TrainConfig(learning_rate=1e-3), device)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, dtype):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_speed(
    cfg: ModelConfig, data: TokenData, batch_size: int, dtype: str, *, steps: int = 10, rounds: int = 12,
    warmup: int = 3, progress: bool | Mode = True,
) -> dict[str, list[float]]:
    """Tokens/s of both models per round (rounds alternate between them)."""
    gen = torch.Generator().manual_seed(0)
    # Contiguous copies: the course's loss uses .view, which needs them (the copy is outside the timing).
    batches = [tuple(t.contiguous() for t in data.get_batch("train", batch_size, cfg.block_size, gen))
               for _ in range(steps)]
    steppers = {name: make_step(m, dtype) for name, m in build_pair(cfg).items()}
    for step in steppers.values():
        for x, y in batches[:warmup]:
            step(x, y)
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    tokens = steps * batch_size * cfg.block_size
    mode = as_mode(progress)
    for _ in bar(range(rounds), mode, f"train {dtype} dropout {cfg.dropout}", "round", leave=False):
        for name, step in steppers.items():
            t0 = time.perf_counter()
            for x, y in batches:
                step(x, y)
            rates[name].append(tokens / (time.perf_counter() - t0))
    line(mode, f"vs-course: train {dtype} dropout {cfg.dropout}: {rounds} rounds done")
    return rates


def _summary(what: str, rates: dict[str, list[float]], base: list[float], **labels: object) -> dict[str, object]:
    """Median and IQR of each side, and the median of the per-round ratios against `base`."""
    row: dict[str, object] = {"what": what, **labels}
    for name, values in rates.items():
        q1, med, q3 = quartiles(values)
        row[f"{name}_median"], row[f"{name}_iqr"] = med, q3 - q1
    # Paired ratios (same round, back to back) cancel most of a shared machine's drift.
    row["speedup"] = statistics.median(a / b for a, b in zip(rates["gptcore"], base))
    return row


def reader_speed(
    data: TokenData, text_file: str, batch_size: int, block_size: int, *, calls: int = 500, rounds: int = 5,
) -> dict[str, object]:
    """Batches/s of TokenData.get_batch (memmap of ids) vs the course's mmap + decode + encode reader."""
    course = CourseReader(text_file, data.tokenizer.chars, batch_size, block_size)
    gen = torch.Generator().manual_seed(0)
    readers = {
        "gptcore": lambda: data.get_batch("train", batch_size, block_size, gen),
        "course": course.get_batch,
    }
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, fn in readers.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            rates[name].append(calls / (time.perf_counter() - t0))
    return _summary("batches/s", rates, rates["course"], dtype="-", dropout="-", baseline="course reader")


def check_inputs(data: TokenData, text_file: str, block_size: int, batch_size: int) -> None:
    """Both readers need the text: gptcore a split longer than a block, the course's one chunk of the raw file."""
    path = Path(text_file)
    if not path.is_file():
        raise UserError(f"--data {path}: vs-course needs the plain text file (the course's reader reads it itself)")
    data.check_block_size(block_size)
    if path.stat().st_size < block_size * batch_size:
        raise UserError(f"--data {path}: {path.stat().st_size} bytes, fewer than the course reader's chunk of "
                        f"block_size x batch_size = {block_size * batch_size}")


def run(
    data: TokenData, text_file: str, cfg: ModelConfig, batch_size: int, *, dtypes: tuple[str, ...] = ("float32",
    "bfloat16"), dropouts: tuple[float, ...] = (0.0, 0.2), steps: int = 10, rounds: int = 12,
    progress: bool | Mode = True,
) -> pd.DataFrame:
    """Every (dropout, dtype) training comparison plus the reader comparison, as one table.

    Each training row compares gptcore with the course's model at the same dtype; a bf16 row also
    compares against the course in float32, which is how the course trains (it never uses autocast).
    """
    check_inputs(data, text_file, cfg.block_size, batch_size)
    rows = []
    for dropout in dropouts:
        course_fp32: list[float] | None = None
        for dtype in dtypes:
            c = ModelConfig(**{**cfg.__dict__, "dropout": dropout})
            rates = train_speed(c, data, batch_size, dtype, steps=steps, rounds=rounds, progress=progress)
            labels = dict(dtype=dtype, dropout=dropout)
            rows.append(_summary("train tokens/s", rates, rates["course"], **labels, baseline=f"course {dtype}"))
            if dtype == "float32":
                course_fp32 = rates["course"]
            elif course_fp32 is not None:
                rows.append(_summary("train tokens/s", {"gptcore": rates["gptcore"]}, course_fp32, **labels,
                                     baseline="course float32"))
    rows.append(reader_speed(data, text_file, batch_size, cfg.block_size, rounds=rounds))
    return pd.DataFrame(rows)
