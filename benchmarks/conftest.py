"""pytest-benchmark microbenchmarks: shared helpers (CPU and wall time of the same calls, GFLOP/s, CUDA mark)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.clocks import CpuClock

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def record(benchmark, clock: CpuClock, flops: float | None = None, tokens: int | None = None) -> None:
    """Put the clock's CPU/wall figures, the thread count, GFLOP/s and tokens/s into extra_info.

    cpu_per_wall comes from the clock alone (both clocks, same calls); GFLOP/s and tokens/s from
    pytest-benchmark's median wall time, which does not exist under --benchmark-disable.
    """
    benchmark.extra_info.update(clock.summary(), threads=torch.get_num_threads())
    if benchmark.stats is None:
        return
    wall = benchmark.stats.stats.median
    if flops is not None:
        benchmark.extra_info["gflops"] = flops / wall / 1e9
    if tokens is not None:
        benchmark.extra_info["tokens_per_s"] = tokens / wall
