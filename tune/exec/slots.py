"""Worker slots: what share of the machine each parallel trial owns (one GPU, or an equal set of CPU cores).

Parallel trials only pay when each owns its share. Measured on a 2-core VM with a small trial config: one
2-thread process 211k tokens/s; two processes pinned to one core each 151k + 149k (1.42x the work per hour); two
2-thread processes left to the OS 18k + 18k (a 6x collapse). So a worker never shares a core or a GPU with
another worker of the same tuner: cores are split into equal, disjoint sets, and a GPU belongs to one worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptcore.errors import UserError
from tune.exec.health import affinity


@dataclass(frozen=True)
class Slot:
    """One worker's share: its index, the cores its trial process is pinned to, and its GPU (physical index)."""

    index: int
    cores: tuple[int, ...]
    gpu: int | None = None

    def describe(self) -> str:
        """'GPU 2' or 'cores 0-3', as trials.csv and the console show it."""
        cores = format_indices(self.cores)
        return f"GPU {self.gpu} (cores {cores})" if self.gpu is not None else f"cores {cores}"


def format_indices(values: tuple[int, ...] | list[int]) -> str:
    """(0, 1, 2, 3, 6) -> '0-3,6': the kernel's cpu-list form."""
    parts, values = [], sorted(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on (tune.exec.health.affinity), as a tuple."""
    return tuple(affinity())


def as_trials_see_it(env: dict[str, Any], slots: list[Slot]) -> dict[str, Any]:
    """The probed environment with the threads and cores of a trial: each is pinned to its slot's cores with one
    torch thread per core (tune.exec.worker.pin_cores), whereas the probe ran unpinned on every usable core."""
    return {**env, "cpu_threads": len(slots[0].cores), "cores": sorted({c for slot in slots for c in slot.cores})}


def plan_slots(workers: int | None, env: dict[str, Any], gpus: tuple[int, ...] | None = None,
               cores: tuple[int, ...] | None = None) -> list[Slot]:
    """One slot per worker: `workers` None means auto (one per chosen GPU; one on a CPU). Errors are one line."""
    device_type = env["device_type"]
    available = usable_cores()
    if cores is not None:
        outside = sorted(set(cores) - set(available))
        if outside:
            raise UserError(f"--cores {format_indices(cores)}: core(s) {format_indices(outside)} are not usable "
                            f"here (usable: {format_indices(available)})")
    cores = cores or available
    if device_type == "cuda":
        visible = [g["index"] for g in env.get("gpus", [])] or [0]
        named = _device_index(env.get("device", "cuda"))
        if named is not None and gpus is not None:
            raise UserError(f"--device cuda:{named} and --gpus {format_indices(gpus)}: choose the GPUs with --gpus "
                            f"(and --device cuda)")
        # --device cuda:N means that GPU alone; --device cuda means every visible one (or --gpus).
        chosen = gpus if gpus is not None else ((named,) if named is not None else tuple(visible))
        missing = sorted(set(chosen) - set(visible))
        if missing:
            raise UserError(f"--gpus {format_indices(chosen)}: no GPU {format_indices(missing)} on this machine "
                            f"(visible: {format_indices(visible)})")
        n = len(chosen) if workers is None else workers
        if n > len(chosen):
            raise UserError(f"--workers {n}: more workers than GPUs ({len(chosen)}: {format_indices(chosen)}); "
                            f"each worker needs a GPU of its own")
        # The CPU side (batches, the Python loop) gets an equal share of cores too, when there are enough.
        share = _split(cores, n) if len(cores) >= n else [tuple(cores)] * n
        return [Slot(i, share[i], gpu=chosen[i]) for i in range(n)]
    if gpus is not None:
        raise UserError(f"--gpus {format_indices(gpus)}: needs a CUDA device (this study runs on {device_type})")
    n = 1 if workers is None else workers
    if device_type == "mps" and n > 1:
        raise UserError(f"--workers {n}: an Apple GPU is one device; use --workers 1")
    if n > len(cores):
        raise UserError(f"--workers {n}: more workers than CPU cores ({len(cores)}: {format_indices(cores)}); "
                        f"each worker needs at least one core of its own")
    share = _split(cores, n)
    return [Slot(i, share[i]) for i in range(n)]


def _device_index(device: str) -> int | None:
    """'cuda:1' -> 1; 'cuda' -> None."""
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else None


def _split(cores: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """n equal, disjoint sets of consecutive cores; a remainder stays unused (unequal shares would make trials
    on different workers train at different speeds, and a time budget would then favour one worker)."""
    size = len(cores) // n
    return [tuple(cores[i * size:(i + 1) * size]) for i in range(n)]
