"""The benchmark suite's logic: timing, arithmetic, crossover, option parsing and output files."""

import itertools
import json

import pandas as pd
import pytest
import torch

from benchmarks import matmul as mm
from benchmarks.__main__ import main
from gptcore.cliutil import run


def test_gflops_arithmetic_and_sizes():
    assert mm.Case("cpu", "float32", "torch", (64, 32, 16)).flops == 2 * 64 * 32 * 16
    assert mm.parse_sizes("64, 128,8x4x2") == [(64, 64, 64), (128, 128, 128), (8, 4, 2)]
    assert mm.size_label((8, 4, 2)) == "8x4x2" and mm.size_label((5, 5, 5)) == "5"
    for bad in ("0", "64x64", "abc", "8x-1x2"):
        with pytest.raises(ValueError, match="bad size"):
            mm.parse_sizes(bad)


def test_blocks_are_synchronised_on_both_ends_and_timed_per_call():
    """A fake clock and device: every block reads the clocks only after a sync."""
    events = []
    ticks = itertools.count(step=0.004)  # each clock read advances 4 ms

    def clock():
        events.append("clock")
        return next(ticks)

    def sync():
        events.append("sync")

    t = mm.time_blocks(lambda: events.append("call"), sync, min_time=0.0, min_blocks=3, clock=clock,
                       cpu_clock=lambda: 0.0)
    assert len(t.wall) == 3 and t.calls_per_block >= 1
    for i, e in enumerate(events):
        if e == "clock" and i > 0 and events[i - 1] != "sync":
            # a clock read right after a call would time the launch, not the work
            assert events[i - 1] == "clock", events[max(0, i - 3):i + 1]
    # Block sizing grows until a block lasts >= BLOCK_S; each sample is per call.
    assert all(w == pytest.approx(0.004 / t.calls_per_block) for w in t.wall)


def test_a_device_case_synchronises_that_device(monkeypatch):
    """The same seam for a real non-CPU path: build() hands back hardware.synchronize on the case's device."""
    seen = []
    monkeypatch.setattr(mm.hw, "synchronize", lambda device: seen.append(device.type))
    fn, sync, _, _ = mm.build(mm.Case("meta", "float32", "torch", (8, 8, 8)))
    mm.time_blocks(fn, sync, min_time=0.0, min_blocks=2)
    assert seen and set(seen) == {"meta"}


def test_cpu_case_measures_both_clocks_and_checks_correctness():
    row = mm.run_case(mm.Case("cpu", "float32", "torch", (64, 64, 64)), min_time=0.05, min_blocks=3)
    assert row["rel_error"] < 1e-5 and row["gflops"] == pytest.approx(2 * 64**3 / (row["wall_ms"] / 1e3) / 1e9)
    assert row["cpu_ms"] > 0 and row["cpu_per_wall"] > 0 and row["cold_ms"] > 0 and row["blocks"] >= 3
    bf = mm.run_case(mm.Case("cpu", "bfloat16", "torch", (64, 64, 64)), min_time=0.01, min_blocks=2)
    assert 1e-5 < bf["rel_error"] < mm.TOLERANCE["bfloat16"]


def test_wrong_products_are_refused(monkeypatch):
    monkeypatch.setattr(mm, "relative_error", lambda *a: 0.5)
    with pytest.raises(RuntimeError, match="relative error 5.00e-01 is too large"):
        mm.run_case(mm.Case("cpu", "float32", "numpy", (16, 16, 16)), min_time=0.01, min_blocks=1)


def synthetic():
    """CPU torch vs a GPU that loses below 512 and wins from 512 on (except a blip at 256)."""
    rows = []
    for n, cpu_ms, gpu_ms in [(64, 0.01, 0.05), (128, 0.05, 0.04), (256, 0.4, 0.5), (512, 3.0, 0.2), (1024, 25, 1)]:
        for dev, ms in (("cpu", cpu_ms), ("cuda", gpu_ms)):
            rows.append({"device": dev, "dtype": "float32", "lib": "torch", "size": str(n), "m": n, "n": n, "k": n,
                         "transfer": False, "wall_ms": ms, "gflops": 2 * n**3 / (ms / 1e3) / 1e9})
    return pd.DataFrame(rows)


def test_speedup_and_crossover_on_a_synthetic_table():
    df = mm.add_comparisons(synthetic(), cpu_peak_gflops=None, gpu_name="NVIDIA H100 80GB HBM3")
    gpu = df[df["device"] == "cuda"].set_index("size")
    assert gpu.loc["1024", "speedup_vs_cpu"] == pytest.approx(25.0)
    assert gpu.loc["1024", "peak_gflops"] == pytest.approx(67e3)  # fp32 without TF32
    cpu = df[df["device"] == "cpu"]
    assert cpu["share_of_peak"].max() == pytest.approx(1.0)  # CPU peak = best measured here
    assert mm.crossover(df, transfer=False) == {"cuda float32": "512"}
    never = synthetic().assign(wall_ms=lambda d: d["wall_ms"].where(d["device"] == "cpu", 1e9))
    assert mm.crossover(mm.add_comparisons(never, None, None), transfer=False) == {"cuda float32": None}


@pytest.mark.parametrize("argv, needle", [
    (["matmul", "--sizes", "64,abc"], "bad size 'abc'"),
    (["matmul", "--dtypes", "float8"], "unknown dtype float8"),
    (["matmul", "--devices", "tpu"], "unknown device tpu"),
    (["matmul", "--dtypes", "float16", "--devices", "cpu"], "GPU only"),
    (["matmul", "--threads", "0"], "--threads: must be at least 1"),
    (["train-step", "--configs", "huge"], "unknown preset huge"),
])
def test_bad_options_are_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m benchmarks")
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_without_cuda(capsys):
    with pytest.raises(SystemExit) as info:
        run(main, ["matmul", "--devices", "cuda"], prog="python -m benchmarks")
    assert info.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_matmul_command_writes_well_formed_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, ["matmul", "--sizes", "32,64", "--min-time", "0.02", "--repeat", "2", "--threads", "1",
                   "--check-timer", "64", "--out", str(tmp_path), "--no-progress"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "torch.utils.benchmark.Timer" in out and "numpy" in out
    df = pd.read_csv(tmp_path / "matmul.csv")
    assert set(df["lib"]) == {"torch", "numpy"} and len(df) == 4 and (df["gflops"] > 0).all()
    assert {"wall_ms", "wall_iqr_ms", "cpu_ms", "cpu_per_wall", "cold_ms", "rel_error", "share_of_peak"} <= set(df)
    doc = json.loads((tmp_path / "matmul.json").read_text())
    assert doc["environment"]["torch_threads"] == 1 and "numpy_blas" in doc["environment"]
    assert len(doc["results"]) == 4 and "crossover" in doc
    assert (tmp_path / "matmul.png").read_bytes()[:4] == b"\x89PNG"
