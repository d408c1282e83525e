"""A training run's curve: one point each time the training losses are read back, the validation loss at evaluations.

Written as CSV, one line at a time and flushed (a run killed at any instant leaves every line before the kill; at
worst the last is torn, and the reader skips it), read back by the tuner's parent, which never imports torch: this
module imports neither torch nor anything that does.
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import IO

from gptcore.files import atomic_write

COLUMNS = ("step", "tokens", "train_seconds", "train_loss", "val_loss", "lr", "tokens_per_s")
SUFFIX = ".curve.csv"


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curve; None: not measured at this point (val_loss between evaluations)."""

    step: int  # optimiser steps so far
    tokens: int  # training tokens so far: step x tokens per step
    train_seconds: float  # timed training so far: the budget's clock (warm-up, compilation, evaluation excluded)
    train_loss: float | None  # mean loss of the steps since the previous point
    val_loss: float | None  # mean validation loss, at an evaluation only
    lr: float  # the learning rate of the last step
    tokens_per_s: float | None  # over the timed steps since the previous point (None: none was timed)


def curve_path(log: str | Path) -> Path:
    """Where a run that logs to `log` writes its curve: trial_0003.log -> trial_0003.curve.csv beside it."""
    log = Path(log)
    return log.with_name(log.stem + SUFFIX)


def _cell(value: float | int | None) -> str:
    # repr: the shortest text that reads back as the same float, so a curve's losses equal the reported ones.
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(value)


class CurveWriter:
    """Writes a curve line by line (replacing an older file of the same name); a write that fails (a full disk)
    is said once on stderr and ends the curve, never the training."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        try:
            self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
            self._write(COLUMNS)
        except OSError as exc:
            self._fail(exc)

    def add(self, point: CurvePoint) -> None:
        """Append one point (flushed: it survives a kill of this process)."""
        if self._file is not None:
            try:
                self._write([_cell(v) for v in astuple(point)])
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Close the file (the points written so far stay)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, row: list[str] | tuple[str, ...]) -> None:
        assert self._file is not None
        csv.writer(self._file).writerow(row)
        self._file.flush()

    def _fail(self, exc: OSError) -> None:
        print(f"curve: {self.path}: {exc}; the curve stops here (training goes on)", file=sys.stderr)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_curve(path: str | Path, points: list[CurvePoint]) -> Path:
    """Write a whole curve at once, atomically (the old file or the new one, at any instant)."""

    def write(tmp: Path) -> None:
        with CurveWriter(tmp) as writer:
            for point in points:
                writer.add(point)

    return atomic_write(path, write)


def _number(text: str, kind: type) -> float | int | None:
    return None if text == "" else kind(text)


def read_curve(path: str | Path) -> list[CurvePoint]:
    """The points of a curve file ([] when there is none); a last line cut short (a killed run's) is skipped.

    ValueError naming the file and line for anything else that is not a curve.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (at byte {exc.start}); expected a curve CSV") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # the writer ends every line: one without its end was cut short
        lines.pop()
    rows = list(csv.reader(lines))
    if not rows:
        return []
    if tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path}: line 1: expected the header {','.join(COLUMNS)}")
    kinds = (int, int, float, float, float, float, float)
    points = []
    for n, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(COLUMNS):
                raise ValueError(f"{len(row)} fields, expected {len(COLUMNS)}")
            values = [_number(cell, kind) for cell, kind in zip(row, kinds)]
            if None in (values[0], values[1], values[2], values[5]):
                raise ValueError("step, tokens, train_seconds and lr are never empty")
            points.append(CurvePoint(*values))
        except ValueError as exc:
            raise ValueError(f"{path}: line {n}: {exc}") from None
    return points
