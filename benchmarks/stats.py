"""Summary statistics shared by the benchmarks."""

from __future__ import annotations

import statistics
from typing import Any

from tune.core.trust import contention
from tune.exec.health import CpuMeter, affinity


def meter(threads: int) -> CpuMeter:
    """A started meter of this process's CPU time and of what other processes took meanwhile from the cores it
    may run on (pinned with taskset: those only; a neighbour on another core is none of its business). The
    tuner's own measure, tune.exec.health: standard library only."""
    return CpuMeter(threads, cores=affinity()).start()


def contended(measure: dict[str, Any], device: str) -> str | None:
    """Why figures measured with `measure` (CpuMeter.stop()) cannot be trusted: other processes kept busy the
    cores the benchmark's threads needed (tune.core.trust.contention's rule); None when it ran alone as far as
    can be told. The benchmark's own CPU share is no evidence here: a small matmul leaves threads idle alone."""
    return contention({**measure, "cpu_share": None}, "cpu" if device == "cpu" else "cuda")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), interpolated inclusively as NumPy and torch.utils.benchmark do."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def cpu_per_wall(cpu: list[float], wall: list[float]) -> float | None:
    """Total CPU seconds / total wall seconds of the same samples (None without wall time).

    Both sums cover the same calls, so the result is the average number of busy threads over them: it
    cannot exceed the cores the process ran on. (A mean of one series over a median of the other can.)
    """
    if len(cpu) != len(wall):
        raise ValueError(f"{len(cpu)} CPU samples but {len(wall)} wall samples: they must be paired")
    total = sum(wall)
    return sum(cpu) / total if total > 0 else None
