"""CPU vs GPU matrix multiplication, measured honestly.

For each case (device x dtype x library x size): check the product against a float64 reference, time the
first call on its own ("cold start"), warm up, then time blocks of calls until a minimum time has passed.
Each block is read on two clocks at once: wall time (time.perf_counter) and CPU time (time.process_time,
every thread of this process). CUDA work is synchronised before each clock read, so what is timed is the
work, not the launch. Reported: median and IQR per call of both clocks, their ratio (total CPU / total wall
of the same blocks), GFLOP/s = 2*M*N*K/t, share of the device's peak, speed-up over the CPU, and the
crossover size.

The peak each row is compared with, and where it comes from (every row and the JSON name the source):
- GPU: the spec sheet of the GPU model (gptcore.hardware), per dtype.
- CPU: --cpu-peak-gflops when given ("given on the command line"); else the reference measurement: torch at
  REFERENCE_SIZE x REFERENCE_SIZE x REFERENCE_SIZE in that dtype on this run's thread count, the median of its
  timed blocks, measured even when that size is not in --sizes (reused when it is).

matmul.json, as written by benchmarks.report.write_matmul (readers: tune's hardware card):
    {"environment": {...},                 # CPU, BLAS and threads, torch/CUDA/driver, GPU (environment())
     "crossover": {"cuda float32": "512" | null, ...}   # per GPU series: smallest size the GPU wins from on
                | {"note": "no GPU: nothing to cross over"},   # a CPU-only run says why it is empty
     "gpu": true | false,                  # whether any GPU was measured
     "cpu_peak": {"float32": {"gflops": 95.1 | null, "source": "...", "size": 2048, "threads": 2,
                              "blocks": 5, "wall_ms": 180.6}},   # size..wall_ms: null when given
     "peaks": [{"device", "dtype", "peak_gflops", "peak_source"}, ...],
     "results": [{one row per case: device, dtype, lib, size, m, n, k, transfer, wall_ms, wall_q1_ms,
                  wall_q3_ms, wall_iqr_ms, cpu_ms, cpu_iqr_ms, cpu_per_wall, gflops, share_of_peak,
                  peak_gflops, peak_source, speedup_vs_cpu (null on the CPU), cold_ms, rel_error, ...}, ...]}
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.progress import Mode, as_mode, bar, line
from benchmarks.stats import contended, cpu_per_wall, meter, quartiles
from gptcore import hardware as hw
from gptcore.errors import UserError
from gptcore.hardware import TORCH_DTYPES
from tune.core import units

BLOCK_S = 0.01  # a timed block lasts at least this long, so clock resolution and overhead vanish
Size = tuple[int, int, int]  # (M, N, K): (M, K) @ (K, N)
# Without --cpu-peak-gflops, the CPU's peak is one fixed case measured on its own: torch at this size. A rate
# taken from the table itself (its best point, or a median over its large sizes) moves with whichever sizes a
# run happens to include and with their outliers, so a row could reach 110 % of "peak". At 2048 a BLAS is
# compute-bound (the packing and threading overheads of small sizes are amortised), and one call takes a
# fraction of a second even on one core, so the reference costs seconds, not minutes.
REFERENCE_SIZE = 2048


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
        # Refused before allocating: the inputs and the product in float32 (a cast or a device copy adds more).
        need, have = 4 * (m * k + k * n + m * n), _memory_bytes()
        if have and need > have:
            raise ValueError(f"bad size {part!r}: its three float32 matrices need {need / 2**30:,.0f} GiB, more "
                             f"than this machine's {have / 2**30:,.0f} GiB of memory")
        sizes.append((m, n, k))
    return sizes


def _memory_bytes() -> int | None:
    """The machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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
        "wall_ms": wmed * 1e3, "wall_iqr_ms": (wq3 - wq1) * 1e3, "wall_q1_ms": wq1 * 1e3, "wall_q3_ms": wq3 * 1e3,
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


@dataclass(frozen=True)
class CpuPeak:
    """The CPU peak one dtype's rows are compared with, and where it comes from."""

    gflops: float | None
    source: str
    size: int | None = None  # the reference measurement's size, threads, timed blocks and median wall time
    threads: int | None = None
    blocks: int | None = None
    wall_ms: float | None = None


def reference_cases(dtypes: list[str]) -> list[Case]:
    """The CPU peak's reference measurement per CPU dtype: torch at REFERENCE_SIZE cubed."""
    return [Case("cpu", dtype, "torch", (REFERENCE_SIZE,) * 3) for dtype in dtypes]


def _is_case(row: pd.Series, case: Case) -> bool:
    return (row["device"], row["dtype"], row["lib"], bool(row["transfer"]), (row["m"], row["n"], row["k"])) == (
        case.device, case.dtype, case.lib, case.transfer, case.size)


def cpu_peaks(df: pd.DataFrame, dtypes: list[str], given: float | None, threads: int) -> dict[str, CpuPeak]:
    """Per CPU dtype: --cpu-peak-gflops when given, else the reference case's row of df (see REFERENCE_SIZE)."""
    peaks: dict[str, CpuPeak] = {}
    for case in reference_cases(dtypes):
        if given is not None:
            peaks[case.dtype] = CpuPeak(given, "given on the command line (--cpu-peak-gflops)")
            continue
        rows = df[df.apply(_is_case, axis=1, case=case)] if len(df) else df
        if rows.empty:
            peaks[case.dtype] = CpuPeak(None, f"none: the reference torch {case.dtype} {REFERENCE_SIZE} was not "
                                              f"measured; give --cpu-peak-gflops")
            continue
        r = rows.iloc[0]
        peaks[case.dtype] = CpuPeak(
            float(r["gflops"]), f"reference measurement: torch {case.dtype} {REFERENCE_SIZE}x{REFERENCE_SIZE}x"
            f"{REFERENCE_SIZE} on {threads} thread(s), median of {int(r['blocks'])} timed blocks",
            REFERENCE_SIZE, threads, int(r["blocks"]), float(r["wall_ms"]))
    return peaks


def add_comparisons(df: pd.DataFrame, cpu_peak: dict[str, CpuPeak], gpu_name: str | None) -> pd.DataFrame:
    """Share of peak (with the peak's source), and speed-up over the CPU (torch, same size and dtype, else float32)."""
    df = df.copy()
    cpu = df[(df["device"] == "cpu") & (df["lib"] == "torch") & ~df["transfer"]]

    def peak(row: pd.Series) -> tuple[float | None, str]:
        if row["device"] == "cpu":
            p = cpu_peak.get(row["dtype"], CpuPeak(None, f"none: no CPU {row['dtype']} reference measured"))
            return p.gflops, p.source
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
    """Per GPU dtype: the smallest size from which on the GPU beats the CPU at every larger size measured (None:
    it never does). A series with no CPU figure to compare with has no crossover at all: it is left out."""
    out: dict[str, str | None] = {}
    gpu = df[(df["device"] != "cpu") & (df["transfer"] == transfer)]
    for (device, dtype), rows in gpu.groupby(["device", "dtype"]):
        if "speedup_vs_cpu" not in rows or rows["speedup_vs_cpu"].isna().all():
            continue  # no CPU measured at these sizes: "never beats the CPU" would be a claim about nothing
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


def run(cases: list[Case], settings: Settings, *, progress: bool | Mode = True,
        check_timer_at: Size | None = None) -> pd.DataFrame:
    """Time every case (a bar, or a line per case: see benchmarks.progress); check_timer_at: cross-check with Timer."""
    mode = as_mode(progress)
    rows = []
    for i, case in enumerate(bar(cases, mode, "matmul", "case"), 1):
        watch = meter(torch.get_num_threads())
        row = run_case(case, min_time=settings.min_time, min_blocks=settings.min_blocks)
        measure = watch.stop()
        row.update(others_cores=measure["others_cores"], contended=contended(measure, case.device))
        if check_timer_at == case.size and case.lib == "torch" and case.dtype == "float32" and not case.transfer:
            row["timer_gflops"] = timer_check(case, settings.min_time)
        rows.append(row)
        line(mode, f"matmul {i}/{len(cases)}: {case.label} {row['size']}: {units.MS.text(row['wall_ms'], True)}, "
                   f"{units.GFLOPS.text(row['gflops'], True)}")
    return pd.DataFrame(rows)


def no_cpu_note(df: pd.DataFrame) -> dict[str, str] | None:
    """matmul.json's crossover when GPU rows have no CPU row to compare with (--devices cuda): why it is empty."""
    if (df["device"] != "cpu").any() and not (df["device"] == "cpu").any():
        return {"note": "no CPU measured (--devices): no crossover to report"}
    return None


def no_gpu_note(cuda_available: bool) -> dict[str, str]:
    """matmul.json's crossover on a run without a GPU: why it is empty, instead of {}."""
    why = "no GPU in --devices" if cuda_available else "no GPU"
    return {"note": f"{why}: nothing to cross over"}
