"""Wall and CPU time read around the same calls, so that their ratio compares like with like."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.stats import cpu_per_wall


class CpuClock:
    """Wraps a function and times every call on both clocks (pytest-benchmark records only wall time).

    CPU time is time.process_time: every thread of this process. Both clocks are read around each call,
    so the CPU and wall figures cover exactly the same calls (pytest-benchmark's calibration calls included).
    """

    def __init__(self, fn: Callable[..., Any], *, wall: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.fn, self._wall, self._cpu = fn, wall, cpu
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def __call__(self, *args: Any) -> Any:
        w0, c0 = self._wall(), self._cpu()
        out = self.fn(*args)
        c1, w1 = self._cpu(), self._wall()  # the wall interval encloses the CPU one
        self.walls.append(w1 - w0)
        self.cpus.append(c1 - c0)
        return out

    def summary(self) -> dict[str, float | int | None]:
        """The first call's wall time, then over the later calls: mean CPU and wall seconds, total CPU / total wall.

        The first call carries first-use costs (thread pools, allocator, kernels), so it is reported on its own,
        as matmul's cold start; with a single call (--benchmark-disable) it is all there is.
        """
        skip = 1 if len(self.walls) > 1 else 0
        walls, cpus = self.walls[skip:], self.cpus[skip:]
        n = len(walls)
        return {"first_call_seconds": self.walls[0] if self.walls else None, "calls": n,
                "cpu_seconds_per_call": sum(cpus) / n if n else None,
                "wall_seconds_per_call": sum(walls) / n if n else None,
                "cpu_per_wall": cpu_per_wall(cpus, walls)}
