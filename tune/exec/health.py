"""What share of the machine a trial got: CPU time against its threads, other processes on its cores, GPU
neighbours. The trial process measures itself (CpuMeter, GpuWatch); the parent judges the record
(tune.core.trust). Standard library only: both sides of a trial import this.

Measured on a 2-core VM: two 2-thread training processes side by side each fall from 211k to 18k tokens/s, so
even one busy neighbour changes a verdict.

A trial pinned to its own cores (parallel workers) is judged on those cores only: another worker busy on its
own cores is not this trial's neighbour, a process that takes time on this trial's cores is.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _busy_seconds(fields: list[str]) -> float:
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy. Steal (a hypervisor
    # giving the core to another VM) is contention too, so it counts as busy.
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def read_proc_stat() -> list[str] | None:
    """The lines of /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return f.read().splitlines()
    except OSError:
        return None


def busy_seconds(cores: list[int] | None = None, stat: list[str] | None = None) -> float | None:
    """CPU seconds all processes have spent busy since boot: on every core, or on `cores` only ("cpuN" lines).

    `stat` is /proc/stat's lines (read now when None; tests pass their own). None off Linux or when a core is
    missing from it.
    """
    stat = read_proc_stat() if stat is None else stat
    if not stat:
        return None
    rows = {fields[0]: fields for fields in (line.split() for line in stat) if fields and fields[0].startswith("cpu")}
    names = ["cpu"] if cores is None else [f"cpu{c}" for c in cores]
    if not all(name in rows for name in names):
        return None
    return sum(_busy_seconds(rows[name]) for name in names)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its descendants, all their threads (user + system).

    A process this one started works for it, not against it: torch.compile's compile workers ran on a trial's
    (or a benchmark's) own cores and were counted as a neighbour, so every compiled run was flagged contended.
    """
    t = os.times()  # children_*: the descendants already reaped; the live ones are read from /proc
    return t.user + t.system + t.children_user + t.children_system + _live_descendants_seconds()


def _live_descendants_seconds() -> float:
    """CPU seconds of this process's live descendants, with what their own reaped children used (0 off Linux)."""
    parent_of, seconds = {}, {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                        stat = f.read()
                    # after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17), in clock ticks
                    fields = stat[stat.rindex(")") + 2:].split()
                    pid = int(entry.name)
                    parent_of[pid] = int(fields[1])
                    seconds[pid] = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    todo, total = list(children.get(os.getpid(), [])), 0.0
    while todo:  # down the tree: a compile worker's own helpers count too
        pid = todo.pop()
        total += seconds[pid]
        todo += children.get(pid, [])
    return total


def busy_now(seconds: float = 1.0, cores: list[int] | None = None) -> float | None:
    """Cores that other processes kept busy over the next `seconds` (this process is idle meanwhile): on `cores`
    only, or on the whole machine."""
    start = busy_seconds(cores)
    if start is None:
        return None
    time.sleep(seconds)
    end = busy_seconds(cores)
    return None if end is None else max(end - start, 0.0) / seconds


def affinity() -> list[int]:
    """The cores this process may run on, sorted: its affinity mask, or every core where the OS has none."""
    with contextlib.suppress(AttributeError, OSError):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class CpuMeter:
    """Measures, between start() and stop(), this process's CPU time against what its threads allow.

    With `cores` (the cores the trial owns, pinned), others_cores counts only what other processes took from
    those cores; without, what they took from the whole machine.
    """

    def __init__(self, threads: int, cores: list[int] | None = None,
                 stat: Callable[[], list[str] | None] = read_proc_stat,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.threads = max(threads, 1)
        self.owned = sorted(cores) if cores else None
        self._stat = stat
        self._clock = clock  # tests pass a fake /proc/stat and a clock that moves with it instead of sleeping
        self._wall = self._own = 0.0
        self._busy: float | None = None

    def _busy_now(self) -> float | None:
        stat = self._stat()
        return None if stat is None else busy_seconds(self.owned, stat)

    def start(self) -> CpuMeter:
        """Read the clocks."""
        self._wall, self._own, self._busy = self._clock(), own_cpu_seconds(), self._busy_now()
        return self

    def stop(self) -> dict[str, Any]:
        """cpu_share, others_cores (cores other processes kept busy), load_1m, threads, cores, cores_owned."""
        wall = max(self._clock() - self._wall, 1e-9)
        own = own_cpu_seconds() - self._own
        busy = self._busy_now()
        others = None
        if busy is not None and self._busy is not None:
            # Pinned, this process ran only on its own cores, so its CPU time is part of their busy time.
            others = max(busy - self._busy - own, 0.0) / wall
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cores = self.owned or affinity()
        return {"cpu_share": own / (wall * self.threads), "others_cores": others, "load_1m": load,
                "threads": self.threads, "cores": cores, "cores_owned": self.owned is not None}


@dataclass
class GpuWatch:
    """Other processes on this trial's GPU and its utilisation, through NVML (nvidia-ml-py) when installed."""

    uuid: str | None = None
    _nvml: Any = None
    _handle: Any = None

    def open(self) -> GpuWatch:
        """Find the device by its UUID (CUDA_VISIBLE_DEVICES renumbers GPUs; UUIDs are stable)."""
        try:
            import pynvml  # the nvidia-ml-py package; optional

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(self.uuid) if self.uuid else None
            self._nvml = pynvml if self._handle is not None else None
        except Exception:  # no package, no driver, no such device: the record says None (unknown), not 0
            self._nvml = None
        return self

    def sample(self) -> dict[str, Any]:
        """gpu_other_processes and gpu_util_percent now (None when NVML is not available)."""
        if self._nvml is None:
            return {"gpu_other_processes": None, "gpu_util_percent": None}
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            others = sum(1 for p in procs if p.pid != os.getpid())
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
        except Exception:  # a driver that answers nothing: unknown
            return {"gpu_other_processes": None, "gpu_util_percent": None}
        return {"gpu_other_processes": others, "gpu_util_percent": util}
