"""Can a trial's figures be trusted? CPU contention, GPU neighbours, too few steps, evaluation share.

A trial that ran beside another busy process is slower, and with a time budget it also learns less: without a
record of it, a contended trial looks like a slow configuration. The trial process measures itself (CpuMeter,
GpuWatch) and the parent judges the record (flags). Standard library only: both sides of a trial import this.

Measured on a 2-core VM: two 2-thread training processes side by side each fall from 211k to 18k tokens/s, so
even one busy neighbour changes a verdict.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

MIN_TIMED_STEPS = 50  # fewer timed steps than this: the budget is too short for the loss to say much
MAX_EVAL_SHARE = 0.25  # evaluation above this share of a trial's training + evaluation time: budget too short
# A trial is contended when other processes used more CPU than the cores its threads leave free (plus slack for
# the tuner's own bookkeeping), or when it got less than this share of the CPU time its threads could use.
SPARE_CORES_SLACK = 0.25
MIN_CPU_SHARE = 0.5


def system_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (every core), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy. Steal (a hypervisor
    # giving the core to another VM) is contention too, so it counts as busy.
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all its threads (user + system)."""
    t = os.times()
    return t.user + t.system


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_now(seconds: float = 1.0) -> float | None:
    """Cores that other processes kept busy over the next `seconds` (this process is idle meanwhile)."""
    start = system_busy_seconds()
    if start is None:
        return None
    time.sleep(seconds)
    end = system_busy_seconds()
    return None if end is None else max(end - start, 0.0) / seconds


class CpuMeter:
    """Measures, between start() and stop(), this process's CPU time against what its threads allow."""

    def __init__(self, threads: int) -> None:
        self.threads = max(threads, 1)
        self._wall = self._own = 0.0
        self._busy: float | None = None

    def start(self) -> CpuMeter:
        """Read the clocks."""
        self._wall, self._own, self._busy = time.perf_counter(), own_cpu_seconds(), system_busy_seconds()
        return self

    def stop(self) -> dict[str, Any]:
        """cpu_share, others_cores (cores other processes kept busy), load_1m, threads, cores."""
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = own_cpu_seconds() - self._own
        busy = system_busy_seconds()
        others = None
        if busy is not None and self._busy is not None:
            others = max(busy - self._busy - own, 0.0) / wall
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"cpu_share": own / (wall * self.threads), "others_cores": others, "load_1m": load,
                "threads": self.threads, "cores": usable_cores()}


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


def contention(measure: dict[str, Any], device_type: str) -> str | None:
    """Why this trial's timing cannot be trusted, in words; None when it ran alone as far as we can tell."""
    reasons = []
    if device_type == "cuda" and (measure.get("gpu_other_processes") or 0) > 0:
        reasons.append(f"{measure['gpu_other_processes']} other process(es) on its GPU")
    others, cores, threads = measure.get("others_cores"), measure.get("cores"), measure.get("threads")
    if others is not None and cores and threads:
        spare = max(cores - threads, 0)
        if others > spare + SPARE_CORES_SLACK:
            reasons.append(f"other processes kept {others:.1f} of {cores} cores busy")
    share = measure.get("cpu_share")
    if device_type == "cpu" and share is not None and share < MIN_CPU_SHARE:
        reasons.append(f"it got {share:.0%} of the CPU time its {threads} thread(s) could use")
    return "; ".join(reasons) or None


def budget_warnings(timed_steps: int | None, eval_share: float | None) -> list[str]:
    """The budget was too short for this trial to say much."""
    out = []
    if timed_steps is not None and timed_steps < MIN_TIMED_STEPS:
        out.append(f"only {timed_steps} timed steps (< {MIN_TIMED_STEPS})")
    if eval_share is not None and eval_share > MAX_EVAL_SHARE:
        out.append(f"evaluation took {eval_share:.0%} of its time (> {MAX_EVAL_SHARE:.0%})")
    return out


def study_warnings(attrs_by_trial: dict[Any, dict[str, Any]]) -> list[str]:
    """Study-wide warnings from the trials' records: contended trials, budgets too short (console and summary)."""
    contended = [n for n, a in attrs_by_trial.items() if a.get("contended")]
    short = [n for n, a in attrs_by_trial.items() if a.get("budget_warning")]
    out = []
    if contended:
        out.append(f"{len(contended)} of {len(attrs_by_trial)} trials ran while other processes competed for the "
                   f"device (trials {_numbers(contended)}): their tokens/s understate the configuration and, with a "
                   f"time budget, so does their loss. Re-run the study on a quiet machine.")
    if short:
        out.append(f"{len(short)} trials had a budget too short to say much (trials {_numbers(short)}: fewer than "
                   f"{MIN_TIMED_STEPS} timed steps, or evaluation above {MAX_EVAL_SHARE:.0%} of their time). "
                   f"Raise --budget (or lower --rungs).")
    return out


def _numbers(numbers: list[Any], shown: int = 12) -> str:
    text = ", ".join(map(str, numbers[:shown]))
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")
