"""pytest-benchmark microbenchmarks: shared helpers (CPU time per call, GFLOP/s, CUDA skip mark)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class CpuClock:
    """Wraps the benchmarked function and adds up its CPU time (pytest-benchmark records only wall time)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any) -> Any:
        c = time.process_time()
        out = self.fn(*args)
        self.seconds += time.process_time() - c
        self.calls += 1
        return out


def record(benchmark, clock: CpuClock, flops: float | None = None) -> None:
    """Put CPU time per call, its ratio to wall time, GFLOP/s and the thread count into extra_info."""
    wall = benchmark.stats.stats.median
    cpu = clock.seconds / max(clock.calls, 1)
    benchmark.extra_info.update(cpu_seconds_per_call=cpu, cpu_per_wall=cpu / wall if wall else None,
                                threads=torch.get_num_threads())
    if flops is not None:
        benchmark.extra_info["gflops"] = flops / wall / 1e9
