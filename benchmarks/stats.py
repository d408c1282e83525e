"""Summary statistics shared by the benchmarks."""

from __future__ import annotations

import statistics


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
