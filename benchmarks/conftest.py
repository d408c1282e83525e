"""pytest-benchmark microbenchmarks: shared helpers (CPU and wall time of the same calls, GFLOP/s, CUDA mark).

Every benchmark runs twice: once timed by wall clock (pytest-benchmark's default, time.perf_counter) and once
by CPU time (time.process_time: every thread of this process), in groups named "..., wall" and "..., cpu time".
pytest-benchmark's table and `pytest-benchmark compare` show only what its timer measured (extra_info is in
the JSON alone), so a second timer is the way to put CPU time in both. CPU/wall of each case, from both clocks
read around the same calls, is in extra_info and printed after the table, and so is contention: a run during
which other processes kept busy the cores its threads needed is flagged (extra_info "contended") and warned of.
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.clocks import CpuClock
from benchmarks.stats import contended, meter

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Parametrize a benchmark with `timer` over these: its wall-clock run and its CPU-time run.
TIMERS = [pytest.param("wall", id="wall"),
          pytest.param("cpu time", id="cpu-time", marks=pytest.mark.benchmark(timer=time.process_time, max_time=0.5))]

_ROWS: list[dict] = []  # what record() saw, for the CPU/wall lines after pytest-benchmark's table


def group(name: str, timer: str) -> str:
    """The pytest-benchmark group: the case, then the clock its times are on ('wall' or 'cpu time')."""
    return f"{name}, {timer}"


def record(benchmark, clock: CpuClock, flops: float | None = None, tokens: int | None = None,
           timer: str = "wall") -> None:
    """Put the clock's CPU/wall figures, the thread count, GFLOP/s and tokens/s into extra_info.

    cpu_per_wall comes from the clock alone (both clocks, same calls); GFLOP/s and tokens/s from
    pytest-benchmark's median wall time: only in the wall run (a CPU-time median is no rate), and not under
    --benchmark-disable, where there are no statistics.
    """
    benchmark.extra_info.update(clock.summary(), threads=torch.get_num_threads(), timer=timer)
    _ROWS.append({"name": getattr(benchmark, "name", "?"), "timer": timer, **benchmark.extra_info})
    if benchmark.stats is None or timer != "wall":
        return
    wall = benchmark.stats.stats.median
    if flops is not None:
        benchmark.extra_info["gflops"] = flops / wall / 1e9
    if tokens is not None:
        benchmark.extra_info["tokens_per_s"] = tokens / wall


@pytest.fixture(autouse=True)
def _neighbours(request):
    """Around every benchmark: what other processes took from the CPU meanwhile. A contended run says so in its
    extra_info ("contended": why) and in the lines after the table; its figures understate the machine."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")  # now: it must outlive this fixture's teardown
    watch = meter(torch.get_num_threads())
    yield
    measure = watch.stop()
    device = "cuda" if "cuda" in request.node.name else "cpu"
    bench.extra_info.update(others_cores=measure["others_cores"], contended=contended(measure, device))
    for row in _ROWS:
        if row["name"] == getattr(bench, "name", "?"):
            row["contended"] = bench.extra_info["contended"]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter) -> None:
    """One line per benchmark run: CPU/wall of the same calls and the thread count."""
    rows = [r for r in _ROWS if r.get("cpu_per_wall") is not None]
    if not rows:
        return
    terminalreporter.section("CPU time / wall time (same calls, both clocks; threads busy on average)")
    width = max(len(r["name"]) for r in rows)
    for r in sorted(rows, key=lambda r: r["name"]):
        terminalreporter.write_line(f"{r['name']:<{width}}  CPU/wall {r['cpu_per_wall']:5.2f}  on "
                                    f"{r['threads']} thread(s)  ({r['calls']} calls)"
                                    + ("  CONTENDED" if r.get("contended") else ""))
    hit = [r for r in rows if r.get("contended")]
    if hit:
        terminalreporter.write_line(f"warning: {len(hit)} of {len(rows)} benchmark run(s) ran while other processes "
                                    f"competed for the CPU (e.g. {hit[0]['name']}: {hit[0]['contended']}): their "
                                    f"times overstate this machine's. Re-run on a quiet machine.", yellow=True)
