"""What a trial's exception means: out of memory (and where, and how much), divergence, or an error."""

from __future__ import annotations

import re
from dataclasses import dataclass

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

STATUSES = ("ok", "pruned", "oom", "predicted_oom", "diverged", "timeout", "error", "interrupted", "running",
            "queued")
# Outcomes that say something about the configuration: they count toward --trials. The others (a crash, an
# interruption) stay in the tables and are queued again once; running and queued trials have no outcome yet.
COUNTED_STATUSES = ("ok", "pruned", "oom", "predicted_oom", "diverged", "timeout")


@dataclass(frozen=True)
class Outcome:
    """A trial's end when it did not finish normally."""

    status: str
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
        return Outcome("diverged", first_line(exc), phase)
    if is_oom(exc):
        return Outcome("oom", first_line(exc), phase, requested_bytes(str(exc)))
    return Outcome("error", first_line(exc), phase)
