"""Matmul microbenchmarks: torch and NumPy on the CPU; CUDA (synchronised inside the timed call) if present."""

import numpy as np
import pytest
import torch

from benchmarks.clocks import CpuClock
from benchmarks.conftest import TIMERS, cuda, group, record

SIZES = [128, 512]


def operands(n: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64)


@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("n", SIZES)
def test_matmul_torch_cpu(benchmark, n, timer):
    a, b = operands(n)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    benchmark.group = group(f"matmul {n}x{n} float32", timer)
    clock = CpuClock(torch.mm)
    out = benchmark(clock, ta, tb)
    record(benchmark, clock, 2 * n**3, timer=timer)
    np.testing.assert_allclose(out.numpy(), reference(a, b), rtol=1e-3, atol=1e-3 * n**0.5)


@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("n", SIZES)
def test_matmul_numpy_cpu(benchmark, n, timer):
    a, b = operands(n)
    benchmark.group = group(f"matmul {n}x{n} float32", timer)
    clock = CpuClock(np.matmul)
    out = benchmark(clock, a, b)
    record(benchmark, clock, 2 * n**3, timer=timer)
    np.testing.assert_allclose(out, reference(a, b), rtol=1e-3, atol=1e-3 * n**0.5)


@cuda
@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("n", [*SIZES, 4096])
def test_matmul_torch_cuda(benchmark, n, timer):
    a, b = operands(n)
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()

    def mm_synced(x, y):
        out = x @ y
        torch.cuda.synchronize()  # time the work, not the launch
        return out

    benchmark.group = group(f"matmul {n}x{n} float32", timer)
    clock = CpuClock(mm_synced)
    out = benchmark(clock, ta, tb)
    record(benchmark, clock, 2 * n**3, timer=timer)
    tol = 1e-2 if torch.backends.cuda.matmul.allow_tf32 else 1e-3
    np.testing.assert_allclose(out.cpu().numpy(), reference(a, b), rtol=tol, atol=tol * n**0.5)
