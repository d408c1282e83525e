"""What a trial's exception means: out of memory (and where, and how much), divergence, or an error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# Every form an out-of-memory error takes in PyTorch: the CUDA caching allocator (torch.OutOfMemoryError,
# "CUDA out of memory"), cuBLAS failing to get its workspace, the per-process fraction set by
# set_per_process_memory_fraction, other accelerators, and the CPU allocator under an rlimit.
OOM_MARKERS = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "would exceed allowed memory",
    "DefaultCPUAllocator: can't allocate memory",
)
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TRIED = re.compile(r"[Tt]ried to allocate ([\d.]+) ?(B|KiB|MiB|GiB|TiB)")
_CPU_BYTES = re.compile(r"you tried to allocate (\d+) bytes")



class Status(str, Enum):
    """A trial's outcome, as every record, table and message spells it (the values are the stored strings).

    Each row: the stored string, the Optuna state the search tells it as (by name: core and the trial process never
    import Optuna), and whether the run measured the step (its peak memory and speed: it trained, to the target or
    to a rung).
    """

    OK = "ok", "COMPLETE", True
    # Pruned, OOM, diverged and timed-out trials are all told as PRUNED. TPE ranks pruned trials by how far they
    # got (the last rung reported) and then by their loss there, and one with no report (an OOM before the first
    # rung) below every other: the sampler learns to avoid the region. FAIL would hide the trial from the
    # sampler, which would keep proposing configurations that do not fit.
    PRUNED = "pruned", "PRUNED", True
    OOM = "oom", "PRUNED", False
    # Predicted not to fit, never run: PRUNED with no report, and infeasible by its memory constraint (see
    # tune.memory.judge.violation_mib), which TPE ranks below every feasible trial, the least excess first.
    PREDICTED_OOM = "predicted_oom", "PRUNED", False
    DIVERGED = "diverged", "PRUNED", False
    TIMEOUT = "timeout", "PRUNED", True
    # An unexplained error or an interruption says nothing about the configuration: kept out of the sampler's
    # model, not counted toward --trials, and queued again once (tune.search.dispatch).
    ERROR = "error", "FAIL", False
    INTERRUPTED = "interrupted", "FAIL", False
    # No outcome yet: only the tables show these (a trial still running, a retry queued).
    RUNNING = "running", "RUNNING", False
    QUEUED = "queued", "WAITING", False

    state: str  # the Optuna TrialState's name
    measured: bool
    def __new__(cls, value: str, state: str, measured: bool) -> Status:
        member = str.__new__(cls, value)
        member._value_ = value
        member.state = state
        member.measured = measured
        return member

    # The stored string wherever it is shown (an f-string, a JSON record), never "Status.OK".
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def counted(self) -> bool:
        """An outcome that says something about the configuration: it counts toward --trials."""
        return self.state in ("COMPLETE", "PRUNED")

    @property
    def is_oom(self) -> bool:
        """Out of memory: run and failed, or predicted and not run."""
        return self in (Status.OOM, Status.PREDICTED_OOM)

    @classmethod
    def parse(cls, text: str) -> Status:
        """The status `text` spells; a one-line error naming it and the statuses there are otherwise."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"trial status {text!r}: expected one of {', '.join(s.value for s in cls)}") from None


# The stored strings by trait, for DataFrame.isin and `in` (derived: each trait is defined once, above).
COUNTED = tuple(s.value for s in Status if s.counted)
MEASURED = tuple(s.value for s in Status if s.measured)
OUT_OF_MEMORY = tuple(s.value for s in Status if s.is_oom)


@dataclass(frozen=True)
class Outcome:
    """A trial's end when it did not finish normally."""

    status: Status
    message: str
    phase: str | None = None
    requested_bytes: int | None = None


def is_oom(exc: BaseException) -> bool:
    """True for every form of out-of-memory error."""
    import torch  # only trial processes classify exceptions; the parent process never imports torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return any(marker in text for marker in OOM_MARKERS)


def requested_bytes(message: str) -> int | None:
    """The allocation size an OOM message names, if it names one."""
    m = _TRIED.search(message)
    if m:
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    m = _CPU_BYTES.search(message)
    return int(m.group(1)) if m else None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, trimmed: what the results table keeps."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify(exc: BaseException) -> Outcome:
    """Map an exception from a trial to its outcome."""
    from gptcore.errors import Diverged

    phase = getattr(exc, "phase", None)
    if isinstance(exc, Diverged):
        return Outcome(Status.DIVERGED, first_line(exc), phase)
    if is_oom(exc):
        return Outcome(Status.OOM, first_line(exc), phase, requested_bytes(str(exc)))
    return Outcome(Status.ERROR, first_line(exc), phase)
