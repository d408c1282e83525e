"""CPU vs GPU matrix multiplication, measured honestly.

For each case (device x dtype x library x size): check the product against a float64 reference, time the
first call on its own ("cold start"), warm up, then time blocks of calls until a minimum time has passed.
Each block is read on two clocks at once: wall time (time.perf_counter) and CPU time (time.process_time,
every thread of this process). CUDA work is synchronised before each clock read, so what is timed is the
work, not the launch. Reported: median and IQR per call of both clocks, their ratio (total CPU / total wall
of the same blocks), GFLOP/s = 2*M*N*K/t, share of the device's peak (GPU: its spec sheet; CPU:
--cpu-peak-gflops, else the median rate at sizes >= REFERENCE_SIZE; each row names its source), speed-up over
the CPU, and the crossover size.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmarks.stats import cpu_per_wall, quartiles
from gptcore import hardware as hw
from gptcore.errors import UserError
from gptcore.hardware import TORCH_DTYPES

BLOCK_S = 0.01  # a timed block lasts at least this long, so clock resolution and overhead vanish
Size = tuple[int, int, int]  # (M, N, K): (M, K) @ (K, N)
# Without --cpu-peak-gflops, the CPU's peak is the median rate over the sizes from here on (cube root of
# M*N*K), where BLAS runs at its full rate: a stated reference, never the single best point of a run.
REFERENCE_SIZE = 512


def _positive_number(value: object) -> bool:
    # NaN fails every comparison, so test for what is valid rather than for what is not.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class Settings:
    """How long to time each case, and the CPU peak to compare with (None: the reference measurement)."""

    min_time: float = 0.5  # seconds of timed blocks per case, at least (--min-time)
    min_blocks: int = 5  # timed blocks per case, at least (--repeat)
    cpu_peak_gflops: float | None = None  # --cpu-peak-gflops

    def __post_init__(self) -> None:
        if not _positive_number(self.min_time):
            raise UserError(f"--min-time must be a positive, finite number of seconds, got {self.min_time!r}")
        if isinstance(self.min_blocks, bool) or not isinstance(self.min_blocks, int) or self.min_blocks < 1:
            raise UserError(f"--repeat must be a positive integer, got {self.min_blocks!r}")
        if self.cpu_peak_gflops is not None and not _positive_number(self.cpu_peak_gflops):
            raise UserError(f"--cpu-peak-gflops must be a positive, finite GFLOP/s, got {self.cpu_peak_gflops!r}")


@dataclass(frozen=True)
class Case:
    """One thing to time."""

    device: str  # "cpu" or "cuda[:i]"
    dtype: str
    lib: str  # "torch" or "numpy"
    size: Size
    transfer: bool = False  # include host->device copies and the device->host copy of the result

    @property
    def flops(self) -> int:
        """2*M*N*K: one multiply and one add per term."""
        m, n, k = self.size
        return 2 * m * n * k

    @property
    def label(self) -> str:
        """Series name in the plot: device dtype lib (+transfer)."""
        return f"{self.device} {self.dtype} {self.lib}" + (" +transfer" if self.transfer else "")


def size_label(size: Size) -> str:
    """'1024' for a square size, else 'MxNxK'."""
    m, n, k = size
    return str(m) if m == n == k else f"{m}x{n}x{k}"


def parse_sizes(text: str) -> list[Size]:
    """'64,128,1024x512x256' -> [(64, 64, 64), (128, 128, 128), (1024, 512, 256)]."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        dims = part.split("x")
        if len(dims) not in (1, 3) or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"bad size {part!r}: expected N or MxNxK with positive integers")
        m, n, k = (int(dims[0]),) * 3 if len(dims) == 1 else tuple(int(d) for d in dims)
        sizes.append((m, n, k))
    return sizes


@dataclass
class Timing:
    """Per-call seconds of each timed block, on both clocks."""

    wall: list[float]
    cpu: list[float]
    calls_per_block: int


def time_blocks(fn: Callable[[], Any], sync: Callable[[], None], *, min_time: float, min_blocks: int,
                clock: Callable[[], float] = time.perf_counter,
                cpu_clock: Callable[[], float] = time.process_time) -> Timing:
    """Warm-up, then blocks of calls (sized to >= BLOCK_S) until min_time and min_blocks have passed."""

    def block(number: int) -> tuple[float, float]:
        sync()
        w0, c0 = clock(), cpu_clock()
        for _ in range(number):
            fn()
        sync()  # the clocks stop when the device has finished, not when the launches return
        return clock() - w0, cpu_clock() - c0

    # Warm-up doubles as calibration: grow the block until it lasts BLOCK_S (like blocked_autorange).
    number = 1
    while True:
        w, _ = block(number)
        if w >= BLOCK_S or number >= 1 << 20:
            break
        number = min(1 << 20, max(number * 2, int(number * BLOCK_S / max(w, 1e-9))))
    walls, cpus = [], []
    t_end = clock() + min_time
    while len(walls) < min_blocks or clock() < t_end:
        w, c = block(number)
        walls.append(w / number)
        cpus.append(c / number)
        if len(walls) >= min_blocks and w > min_time:  # one block outlasts the budget: enough samples
            break
    return Timing(walls, cpus, number)


def _make_inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    m, n, k = case.size
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)


def build(case: Case) -> tuple[Callable[[], Any], Callable[[], None], np.ndarray, np.ndarray]:
    """The function to time, its sync, and the float32 host inputs (for the reference)."""
    a32, b32 = _make_inputs(case)
    if case.lib == "numpy":
        if case.dtype != "float32" or case.device != "cpu":
            raise ValueError("numpy runs float32 on the CPU only")
        return (lambda: a32 @ b32), (lambda: None), a32, b32
    device = torch.device(case.device)
    dtype = torch_dtype(case.dtype)

    def sync() -> None:
        hw.synchronize(device)

    if case.transfer:
        # Pinned host buffers: the best case for copies (pageable memory is slower still).
        a_h = torch.from_numpy(a32).to(dtype).pin_memory()
        b_h = torch.from_numpy(b32).to(dtype).pin_memory()

        def fn() -> torch.Tensor:
            c = a_h.to(device, non_blocking=True) @ b_h.to(device, non_blocking=True)
            return c.to("cpu")

        return fn, sync, a32, b32
    a = torch.from_numpy(a32).to(device=device, dtype=dtype)
    b = torch.from_numpy(b32).to(device=device, dtype=dtype)
    return (lambda: a @ b), sync, a32, b32


def torch_dtype(name: str) -> torch.dtype:
    """'tf32' is float32 storage with TF32 tensor-core matmuls (a CUDA setting, not a dtype)."""
    return torch.float32 if name == "tf32" else TORCH_DTYPES[name]


def relative_error(result: Any, a32: np.ndarray, b32: np.ndarray, dtype: str) -> float:
    """||C - C64||_F / ||C64||_F against float64 on inputs rounded to `dtype` (only the product's error counts)."""
    if isinstance(result, torch.Tensor):
        a = torch.from_numpy(a32).to(torch_dtype(dtype)).double()
        b = torch.from_numpy(b32).to(torch_dtype(dtype)).double()
        ref = a @ b
        got = result.detach().to("cpu").double()
    else:
        ref = torch.from_numpy(a32.astype(np.float64) @ b32.astype(np.float64))
        got = torch.from_numpy(np.asarray(result, dtype=np.float64))
    return float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))


# Largest relative error each dtype may show at all: a wrong kernel or a wrong layout is far above these.
TOLERANCE = {"float32": 1e-3, "tf32": 1e-2, "bfloat16": 5e-2, "float16": 1e-2}


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for CUDA float32 matmuls inside the block, restoring the setting after."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def run_case(case: Case, *, min_time: float, min_blocks: int) -> dict[str, Any]:
    """Time the first call (cold start), check it against float64, then time warm blocks; one table row."""
    with tf32_matmul(case.dtype == "tf32"):
        return _run_case(case, min_time=min_time, min_blocks=min_blocks)


def _run_case(case: Case, *, min_time: float, min_blocks: int) -> dict[str, Any]:
    fn, sync, a32, b32 = build(case)
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    first = fn()  # cold start: first-use costs (library loading, kernel selection, allocator growth)
    sync()
    cold_wall, cold_cpu = time.perf_counter() - w0, time.process_time() - c0
    err = relative_error(first, a32, b32, case.dtype)
    if err > TOLERANCE[case.dtype]:
        raise RuntimeError(f"{case.label} {size_label(case.size)}: relative error {err:.2e} is too large")
    del first
    t = time_blocks(fn, sync, min_time=min_time, min_blocks=min_blocks)
    wq1, wmed, wq3 = quartiles(t.wall)
    cq1, cmed, cq3 = quartiles(t.cpu)
    return {
        **{k: v for k, v in asdict(case).items() if k != "size"}, "size": size_label(case.size),
        "m": case.size[0], "n": case.size[1], "k": case.size[2],
        "rel_error": err,
        "cold_ms": cold_wall * 1e3, "cold_cpu_ms": cold_cpu * 1e3,
        "wall_ms": wmed * 1e3, "wall_iqr_ms": (wq3 - wq1) * 1e3,
        "cpu_ms": cmed * 1e3, "cpu_iqr_ms": (cq3 - cq1) * 1e3,
        "cpu_per_wall": cpu_per_wall(t.cpu, t.wall),  # same blocks on both clocks, not median over median
        "gflops": case.flops / wmed / 1e9, "blocks": len(t.wall), "calls_per_block": t.calls_per_block,
        # TF32 state during this case (CUDA float32 only): forced on for "tf32", off for "float32".
        "tf32": torch.backends.cuda.matmul.allow_tf32 if case.device.startswith("cuda") else None,
    }


def timer_check(case: Case, min_time: float) -> float:
    """GFLOP/s of the same case from torch.utils.benchmark.Timer.blocked_autorange (an independent check)."""
    from torch.utils import benchmark as tb

    fn, _, _, _ = build(case)
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_time)
    return case.flops / m.median / 1e9


def cpu_peaks(df: pd.DataFrame, given: float | None) -> dict[str, tuple[float | None, str]]:
    """Per CPU dtype: the peak GFLOP/s to compare with, and its source (given, or the reference measurement)."""
    peaks: dict[str, tuple[float | None, str]] = {}
    for dtype, rows in df[df["device"] == "cpu"].groupby("dtype"):
        if given is not None:
            peaks[dtype] = (given, "--cpu-peak-gflops")
            continue
        ref = rows[rows["m"] * rows["n"] * rows["k"] >= REFERENCE_SIZE**3]
        if ref.empty:
            peaks[dtype] = (None, f"none: no CPU {dtype} size >= {REFERENCE_SIZE} measured; give --cpu-peak-gflops")
        else:
            peaks[dtype] = (float(ref["gflops"].median()),
                            f"median of the {len(ref)} CPU {dtype} rates at sizes >= {REFERENCE_SIZE}")
    return peaks


def add_comparisons(df: pd.DataFrame, cpu_peak_gflops: float | None, gpu_name: str | None) -> pd.DataFrame:
    """Share of peak (with the peak's source), and speed-up over the CPU (torch, same size and dtype, else float32)."""
    df = df.copy()
    cpu = df[(df["device"] == "cpu") & (df["lib"] == "torch") & ~df["transfer"]]
    cpu_peak = cpu_peaks(df, cpu_peak_gflops)

    def peak(row: pd.Series) -> tuple[float | None, str]:
        if row["device"] == "cpu":
            return cpu_peak[row["dtype"]]
        dtype = "float32" if row["dtype"] == "tf32" else row["dtype"]
        p = hw.gpu_peak_flops(gpu_name or "", dtype, tf32=row["dtype"] == "tf32")
        if p is None:
            return None, f"none: {gpu_name or 'this GPU'} is not in the spec table"
        return p / 1e9, f"spec sheet of {gpu_name}, {row['dtype']}"

    peaks = df.apply(peak, axis=1, result_type="expand")
    df["peak_gflops"], df["peak_source"] = pd.to_numeric(peaks[0]), peaks[1]
    df["share_of_peak"] = df["gflops"] / df["peak_gflops"]

    def speedup(row: pd.Series) -> tuple[float | None, str | None]:
        if row["device"] == "cpu":
            return None, None
        dtype = "float32" if row["dtype"] == "tf32" else row["dtype"]
        same = cpu[(cpu["size"] == row["size"]) & (cpu["dtype"] == dtype)]
        base = same if not same.empty else cpu[(cpu["size"] == row["size"]) & (cpu["dtype"] == "float32")]
        if base.empty:
            return None, None
        return base["wall_ms"].iloc[0] / row["wall_ms"], f"cpu {base['dtype'].iloc[0]} torch"

    pairs = df.apply(speedup, axis=1, result_type="expand")
    df["speedup_vs_cpu"], df["speedup_baseline"] = pairs[0], pairs[1]
    return df


def crossover(df: pd.DataFrame, transfer: bool) -> dict[str, str | None]:
    """Per GPU dtype: the smallest size from which on the GPU beats the CPU at every larger size measured."""
    out: dict[str, str | None] = {}
    gpu = df[(df["device"] != "cpu") & (df["transfer"] == transfer)]
    for (device, dtype), rows in gpu.groupby(["device", "dtype"]):
        rows = rows.assign(flops=rows["m"] * rows["n"] * rows["k"]).sort_values("flops")
        faster = (rows["speedup_vs_cpu"] > 1).tolist()
        found = None
        for i in range(len(faster)):
            if all(faster[i:]):
                found = rows["size"].iloc[i]
                break
        out[f"{device} {dtype}" + (" +transfer" if transfer else "")] = found
    return out


def environment(devices: list[str]) -> dict[str, Any]:
    """CPU model and cores, BLAS of NumPy and torch with thread counts, torch/CUDA/driver, GPU and memory."""
    import os

    env: dict[str, Any] = {"cpu": hw.cpu_model(), "cpu_count": os.cpu_count(), "torch": str(torch.__version__),
                           "torch_threads": torch.get_num_threads(), "numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info

        env["numpy_blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                             for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        env["numpy_blas"] = "threadpoolctl not installed"
    env["torch_blas"] = "MKL" if torch.backends.mkl.is_available() else "other"
    env["torch_mkldnn"] = torch.backends.mkldnn.is_available()
    for dev in devices:
        if dev.startswith("cuda"):
            env.update({k: v for k, v in hw.environment(torch.device(dev)).items() if k not in ("cpu",)})
            env["tf32_matmul_default"] = hw.tf32_enabled()
    return env


def run(cases: list[Case], settings: Settings, *, progress: bool = True,
        check_timer_at: Size | None = None) -> pd.DataFrame:
    """Time every case (tqdm over cases); with check_timer_at, cross-check torch float32 there with Timer."""
    rows = []
    for case in tqdm(cases, desc="matmul", unit="case", disable=not progress):
        row = run_case(case, min_time=settings.min_time, min_blocks=settings.min_blocks)
        if check_timer_at == case.size and case.lib == "torch" and case.dtype == "float32" and not case.transfer:
            row["timer_gflops"] = timer_check(case, settings.min_time)
        rows.append(row)
    return pd.DataFrame(rows)
