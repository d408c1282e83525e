"""The benchmark suite's logic: timing, arithmetic, crossover, option parsing and output files."""

import json
import re

import pandas as pd
import pytest
import torch

from benchmarks import matmul as mm
from benchmarks.__main__ import main
from gptcore.cliutil import run
from gptcore.errors import UserError


def test_gflops_arithmetic_and_sizes():
    assert mm.Case("cpu", "float32", "torch", (64, 32, 16)).flops == 2 * 64 * 32 * 16
    assert mm.parse_sizes("64, 128,8x4x2") == [(64, 64, 64), (128, 128, 128), (8, 4, 2)]
    assert mm.size_label((8, 4, 2)) == "8x4x2" and mm.size_label((5, 5, 5)) == "5"
    for bad in ("0", "64x64", "abc", "8x-1x2"):
        with pytest.raises(ValueError, match="bad size"):
            mm.parse_sizes(bad)


def test_calibration_grows_the_block_until_it_lasts_block_s_and_syncs_around_each():
    """A fake device where every call takes 3 ms of wall and 1.5 ms of CPU time; clocks move only with calls."""
    events = []
    now = {"calls": 0}
    per_call_us, cpu_per_call_us = 3000, 1500  # integers: the block lengths are exact, not float sums

    def call():
        events.append("call")
        now["calls"] += 1

    def clock():
        events.append("clock")
        return now["calls"] * per_call_us / 1e6

    def sync():
        events.append("sync")

    t = mm.time_blocks(call, sync, min_time=0.05, min_blocks=2, clock=clock,
                       cpu_clock=lambda: now["calls"] * cpu_per_call_us / 1e6)
    # Calls between each block's opening and closing sync: 1 call (3 ms), then the estimate 3 calls (9 ms, still
    # short of BLOCK_S = 10 ms), then double: 6 calls (18 ms) is the block; timed blocks of 6 follow.
    blocks: list[int] = []
    calls: int | None = None  # calls since the block's opening sync; None between blocks
    for e in events:
        if e == "sync" and calls is None:
            calls = 0
        elif e == "sync":
            blocks.append(calls)
            calls = None
        elif e == "call":
            assert calls is not None, "a call outside a synchronised block"
            calls += 1
    assert blocks[:3] == [1, 3, 6] and t.calls_per_block == 6
    assert 3 * per_call_us / 1e6 < mm.BLOCK_S <= 6 * per_call_us / 1e6
    # Timed blocks until min_time: 3 blocks of 18 ms reach 50 ms, 2 would not.
    assert blocks[3:] == [6, 6, 6] and len(t.wall) == len(t.cpu) == 3
    assert t.wall == pytest.approx([0.003] * 3) and t.cpu == pytest.approx([0.0015] * 3)
    for i, e in enumerate(events):
        if e == "clock" and i > 0:
            # a clock read right after a call would time the launch, not the work
            assert events[i - 1] in ("sync", "clock"), events[max(0, i - 3):i + 1]


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
    assert gpu.loc["1024", "peak_source"] == "spec sheet of NVIDIA H100 80GB HBM3, float32"
    cpu = df[df["device"] == "cpu"].set_index("size")
    # CPU peak: the median over the sizes >= 512 (here 512 and 1024), the same for every CPU row.
    reference = (cpu.loc["512", "gflops"] + cpu.loc["1024", "gflops"]) / 2
    assert cpu["peak_gflops"].tolist() == pytest.approx([reference] * 5)
    assert set(cpu["peak_source"]) == {"median of the 2 CPU float32 rates at sizes >= 512"}
    assert mm.crossover(df, transfer=False) == {"cuda float32": "512"}
    never = synthetic().assign(wall_ms=lambda d: d["wall_ms"].where(d["device"] == "cpu", 1e9))
    assert mm.crossover(mm.add_comparisons(never, None, None), transfer=False) == {"cuda float32": None}


def test_cpu_peak_is_a_stated_reference_not_an_outlier():
    """Fake rates with an outlier at 128: the peak is the median at sizes >= 512, or the given one."""
    rates = {64: 5.0, 128: 400.0, 256: 40.0, 512: 60.0, 1024: 80.0, 2048: 70.0}
    rows = [{"device": "cpu", "dtype": "float32", "lib": lib, "size": str(n), "m": n, "n": n, "k": n,
             "transfer": False, "gflops": g * (1.1 if lib == "numpy" else 1.0),
             "wall_ms": 2 * n**3 / (g * 1e9) * 1e3} for n, g in rates.items() for lib in ("torch", "numpy")]
    df = mm.add_comparisons(pd.DataFrame(rows), cpu_peak_gflops=None, gpu_name=None).set_index(["size", "lib"])
    reference = [r["gflops"] for r in rows if r["m"] >= 512]
    assert df["peak_gflops"].unique().tolist() == pytest.approx([pd.Series(reference).median()])
    assert df.loc[("128", "torch"), "share_of_peak"] > 5  # the outlier shows as one, not as "the peak"
    assert df["peak_source"].unique().tolist() == ["median of the 6 CPU float32 rates at sizes >= 512"]
    given = mm.add_comparisons(pd.DataFrame(rows), cpu_peak_gflops=100.0, gpu_name=None)
    assert (given["peak_gflops"] == 100.0).all() and set(given["peak_source"]) == {"--cpu-peak-gflops"}
    small = mm.add_comparisons(pd.DataFrame(rows[:6]), cpu_peak_gflops=None, gpu_name=None)  # sizes 64..256 only
    assert small["peak_gflops"].isna().all() and small["share_of_peak"].isna().all()
    assert small["peak_source"].iloc[0].startswith("none: no CPU float32 size >= 512 measured")


@pytest.mark.parametrize("settings, needle", [
    (dict(min_time=float("nan")), "--min-time must be a positive, finite number"),
    (dict(min_time=float("inf")), "--min-time must be a positive, finite number"),
    (dict(min_time=0), "--min-time must be a positive, finite number"),
    (dict(min_blocks=0), "--repeat must be a positive integer"),
    (dict(cpu_peak_gflops=-5.0), "--cpu-peak-gflops must be a positive, finite GFLOP/s"),
    (dict(cpu_peak_gflops=float("nan")), "--cpu-peak-gflops must be a positive, finite GFLOP/s"),
])
def test_matmul_settings_validate_themselves(settings, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        mm.Settings(**settings)


@pytest.mark.parametrize("argv, needle", [
    (["--min-time", "nan"], "--min-time"),
    (["--cpu-peak-gflops", "-5"], "--cpu-peak-gflops"),
    (["--out", "{file}/b"], "--out {file}/b: {file} is a file, not a folder"),
])
def test_bad_matmul_input_is_refused_before_any_work(argv, needle, tmp_path, monkeypatch, capsys):
    """One line naming the flag, exit 2, and not a single case timed (mm.run would record it)."""
    file = tmp_path / "f"
    file.write_text("x")
    monkeypatch.setattr(mm, "run", lambda *a, **k: pytest.fail("benchmarked before refusing the input"))
    argv = [a.format(file=file) for a in argv]
    with pytest.raises(SystemExit) as info:
        run(main, ["matmul", "--sizes", "8", "--no-progress", *argv], prog="python -m benchmarks")
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle.format(file=file) in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("command", ["train-step", "vs-course"])
def test_every_subcommand_checks_out_before_work(command, tmp_path, capsys):
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(SystemExit) as info:
        run(main, [command, "--out", str(file / "b"), "--no-progress"], prog="python -m benchmarks")
    assert info.value.code == 2 and f"--out {file}/b: {file} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["matmul", "--sizes", "64,abc"], "bad size 'abc'"),
    (["matmul", "--dtypes", "float8"], "unknown dtype float8"),
    (["matmul", "--devices", "tpu"], "unknown device tpu"),
    (["matmul", "--dtypes", "float16", "--devices", "cpu"], "GPU only"),
    (["matmul", "--threads", "0"], "argument --threads: expected an integer from 1 to 1024"),
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
    # Sizes 32 and 64 only: no reference measurement for the CPU peak, and the files say so.
    assert doc["peaks"] == [{"device": "cpu", "dtype": "float32", "peak_gflops": None,
                             "peak_source": "none: no CPU float32 size >= 512 measured; give --cpu-peak-gflops"}]
    assert "peak cpu float32: unknown (none: no CPU float32 size >= 512" in out
    assert (tmp_path / "matmul.png").read_bytes()[:4] == b"\x89PNG"
