"""Devices: choosing one, mixed precision, peak memory, peak FLOPS and an environment fingerprint."""

from __future__ import annotations

import contextlib
import platform
import re
import resource
import sys

import torch

from gptcore.errors import UserError

# Dense peak throughput in FLOP/s from the vendors' data sheets: (bf16/fp16 tensor, tf32 tensor, fp32 without
# tensor cores). Matched by substring against torch.cuda.get_device_name(), most specific first.
GPU_PEAK_FLOPS: list[tuple[str, float, float, float]] = [
    ("H200", 989e12, 494e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 494e12, 67e12),  # SXM
    ("GH200", 989e12, 494e12, 67e12),
    ("B200", 2250e12, 1100e12, 80e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("A10G", 70e12, 35e12, 31.2e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L4", 121e12, 60e12, 30.3e12),
    ("RTX 4090", 165e12, 82.6e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12, 35.6e12),
    ("V100", 125e12, 15.7e12, 15.7e12),  # no TF32: float32 runs at the fp32 rate
    ("T4", 65e12, 8.1e12, 8.1e12),
]

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if present, else mps, else cpu; other names are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: unsupported device type (expected cpu, cuda or mps)")
    return device


def check_dtype(device: torch.device, dtype: str) -> None:
    """Refuse precision/device pairs that do not work, with a message that says what would."""
    if dtype == "float16" and device.type == "cpu":
        raise UserError("--dtype float16 needs a GPU; on the CPU use bfloat16 or float32")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bfloat16: this GPU does not support bfloat16; use float16")


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: weights stay float32, matmuls run in `dtype`."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype])


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory window on CUDA (the CPU has only a lifetime peak RSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def vm_status() -> dict[str, int]:
    """This process's Vm* sizes from /proc/self/status, in bytes ({} where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return {}
    return {k: int(v) * 1024 for k, v in re.findall(r"^(Vm\w+):\s+(\d+) kB", text, re.M)}


def peak_data_bytes() -> int | None:
    """Peak of this process's data segment so far: what RLIMIT_DATA (the CPU's --memory-limit) counts.

    Linux keeps the peak of the whole address space (VmPeak), not of the data segment. What is not data (code,
    read-only and file mappings such as the memory-mapped corpus, the main stack) barely changes once training
    runs, so VmPeak less the non-data part now is the data peak: within 2 % of the smallest RLIMIT_DATA that
    trained, in the measurement of docs/memory.md.
    """
    vm = vm_status()
    if not {"VmPeak", "VmSize", "VmData"} <= vm.keys():
        return None
    return vm["VmPeak"] - (vm["VmSize"] - vm["VmData"])


def peak_memory(device: torch.device) -> dict[str, int]:
    """CUDA: max allocated and reserved since the last reset; always: peak RSS of the process; on Linux, the
    peak of its data segment."""
    out = {"peak_rss_bytes": peak_rss_bytes()}
    data = peak_data_bytes()
    if data is not None:
        out["peak_data_bytes"] = data
    if device.type == "cuda":
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return out


def device_name(device: torch.device) -> str:
    """Human name: the GPU's marketing name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the portable answer
    return platform.processor() or platform.machine()


def tf32_enabled() -> bool:
    """Whether float32 matmuls on CUDA may use TF32 tensor cores (torch's default is no)."""
    return torch.backends.cuda.matmul.allow_tf32


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for `dtype` (float32 counts TF32 when enabled); None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return gpu_peak_flops(name, dtype, tf32=tf32_enabled())


def gpu_peak_flops(name: str, dtype: str, tf32: bool = False) -> float | None:
    """Look a GPU name up in GPU_PEAK_FLOPS."""
    for key, half, tf32_peak, single in GPU_PEAK_FLOPS:
        if key in name:
            if dtype != "float32":
                return half
            return tf32_peak if tf32 else single
    return None


def environment(device: torch.device) -> dict[str, object]:
    """What a measurement depends on: device, memory, versions, thread count."""
    env: dict[str, object] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": str(torch.__version__),  # a plain str: torch's TorchVersion would import torch when unpickled
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["cuda"] = torch.version.cuda
        env["capability"] = f"{props.major}.{props.minor}"
        with contextlib.suppress(AttributeError, RuntimeError):  # informative only; a private API
            env["cuda_driver"] = torch._C._cuda_getDriverVersion()
    return env
