"""How the benchmarks show progress: a tqdm bar on a terminal, a plain line per case otherwise, or nothing.

A bar redraws itself with carriage returns, which turn a redirected log (CI, `| tee`) into one long line of
redraws; off a terminal each finished case is one plain line on stderr instead. -q/--quiet and --no-progress
turn both off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Literal, TypeVar

from tqdm import tqdm

Mode = Literal["bar", "lines", "off"]
T = TypeVar("T")


def choose(no_progress: bool = False, quiet: bool = False, stream=None) -> Mode:
    """'bar' when stderr is a terminal, 'lines' when it is not, 'off' with --no-progress or -q."""
    if no_progress or quiet:
        return "off"
    stream = sys.stderr if stream is None else stream
    return "bar" if stream.isatty() else "lines"


def as_mode(progress: bool | str) -> Mode:
    """The library functions' `progress` argument: True/False (a bar or nothing, as before) or a Mode."""
    if progress is True:
        return "bar"
    if progress is False:
        return "off"
    if progress not in ("bar", "lines", "off"):
        raise ValueError(f"progress must be True, False, 'bar', 'lines' or 'off', got {progress!r}")
    return progress  # type: ignore[return-value]


def bar(items: Iterable[T], mode: Mode, desc: str, unit: str, **kwargs) -> Iterator[T]:
    """tqdm over items in 'bar' mode; the items themselves otherwise."""
    return iter(tqdm(items, desc=desc, unit=unit, disable=mode != "bar", **kwargs))


def line(mode: Mode, text: str) -> None:
    """One plain progress line on stderr in 'lines' mode (flushed, so a log shows it as it happens)."""
    if mode == "lines":
        print(text, file=sys.stderr, flush=True)


class LineCounter:
    """A stand-in for a tqdm bar (update(n)) that prints a plain line every `every` units, and at the total."""

    def __init__(self, mode: Mode, desc: str, total: int, every: int, unit: str) -> None:
        self.mode, self.desc, self.total, self.every, self.unit, self.n = mode, desc, total, max(1, every), unit, 0

    def update(self, n: int = 1) -> None:
        """Count n more units; print a line when a multiple of `every` (or the total) is crossed."""
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or (self.n >= self.total > before):
            line(self.mode, f"{self.desc}: {self.n}/{self.total} {self.unit}")
