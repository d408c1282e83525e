"""The benchmark suite's logic: timing, arithmetic, crossover, option parsing and output files."""

import json
import re
import sys

import pandas as pd
import pytest
import torch

from benchmarks import matmul as mm
from benchmarks.__main__ import main
from gptcore.cliutil import run
from gptcore.errors import UserError
from tune.core.units import GFLOPS


def test_gflops_arithmetic_and_sizes():
    assert mm.Case("cpu", "float32", "torch", (64, 32, 16)).flops == 2 * 64 * 32 * 16
    assert mm.parse_sizes("64, 128,8x4x2") == [(64, 64, 64), (128, 128, 128), (8, 4, 2)]
    assert mm.size_label((8, 4, 2)) == "8x4x2" and mm.size_label((5, 5, 5)) == "5"
    for bad in ("0", "64x64", "abc", "8x-1x2"):
        with pytest.raises(ValueError, match="bad size"):
            mm.parse_sizes(bad)
    # A size whose matrices could never fit is refused before allocating (it was a NumPy traceback).
    with pytest.raises(ValueError, match=r"bad size '10000000': its three float32 matrices need [\d,]+ GiB, more "
                                         r"than this machine's [\d,]+ GiB"):
        mm.parse_sizes("10000000")


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
    peak = {"float32": mm.CpuPeak(50.0, "given on the command line (--cpu-peak-gflops)")}
    df = mm.add_comparisons(synthetic(), peak, gpu_name="NVIDIA H100 80GB HBM3")
    gpu = df[df["device"] == "cuda"].set_index("size")
    assert gpu.loc["1024", "speedup_vs_cpu"] == pytest.approx(25.0)
    assert gpu.loc["1024", "peak_gflops"] == pytest.approx(67e3)  # fp32 without TF32
    assert gpu.loc["1024", "peak_source"] == "spec sheet of NVIDIA H100 80GB HBM3, float32"
    cpu = df[df["device"] == "cpu"].set_index("size")
    assert cpu["peak_gflops"].tolist() == [50.0] * 5 and cpu["speedup_vs_cpu"].isna().all()
    assert cpu["share_of_peak"].tolist() == pytest.approx((cpu["gflops"] / 50.0).tolist())
    assert mm.crossover(df, transfer=False) == {"cuda float32": "512"}
    never = synthetic().assign(wall_ms=lambda d: d["wall_ms"].where(d["device"] == "cpu", 1e9))
    assert mm.crossover(mm.add_comparisons(never, {}, None), transfer=False) == {"cuda float32": None}


def cpu_rows(rates: dict[int, float]) -> pd.DataFrame:
    """CPU torch and NumPy float32 rows at the given GFLOP/s (NumPy 10 % faster), 7 timed blocks each."""
    return pd.DataFrame([{"device": "cpu", "dtype": "float32", "lib": lib, "size": str(n), "m": n, "n": n, "k": n,
                          "transfer": False, "gflops": g * (1.1 if lib == "numpy" else 1.0), "blocks": 7,
                          "wall_ms": 2 * n**3 / (g * 1e9) * 1e3} for n, g in rates.items()
                         for lib in ("torch", "numpy")])


def test_cpu_peak_is_the_reference_case_not_an_outlier_of_the_table(monkeypatch):
    """Rates with an outlier at 128 and NumPy above torch: the peak is torch at REFERENCE_SIZE alone."""
    monkeypatch.setattr(mm, "REFERENCE_SIZE", 1024)
    df = cpu_rows({64: 5.0, 128: 400.0, 256: 40.0, 512: 60.0, 1024: 80.0, 2048: 70.0})
    peak = mm.cpu_peaks(df, ["float32"], given=None, threads=3)["float32"]
    assert (peak.gflops, peak.size, peak.threads, peak.blocks) == (80.0, 1024, 3, 7)
    assert peak.wall_ms == pytest.approx(2 * 1024**3 / 80e9 * 1e3)
    assert peak.source == ("reference measurement: torch float32 1024x1024x1024 on 3 thread(s), median of 7 timed "
                           "blocks")
    out = mm.add_comparisons(df, {"float32": peak}, gpu_name=None).set_index(["size", "lib"])
    assert (out["peak_gflops"] == 80.0).all() and set(out["peak_source"]) == {peak.source}
    assert out.loc[("128", "torch"), "share_of_peak"] == pytest.approx(5.0)  # the outlier shows as one
    given = mm.cpu_peaks(df, ["float32"], given=100.0, threads=3)["float32"]
    assert given == mm.CpuPeak(100.0, "given on the command line (--cpu-peak-gflops)")
    missing = mm.cpu_peaks(df[df["m"] < 1024], ["float32"], given=None, threads=3)["float32"]
    assert missing.gflops is None and missing.source.startswith("none: the reference torch float32 1024 was not")
    blank = mm.add_comparisons(df, {}, gpu_name=None)
    assert blank["peak_gflops"].isna().all() and blank["share_of_peak"].isna().all()


def test_reference_cases_are_torch_at_the_reference_size(monkeypatch):
    monkeypatch.setattr(mm, "REFERENCE_SIZE", 96)
    assert mm.reference_cases(["float32", "bfloat16"]) == [mm.Case("cpu", "float32", "torch", (96, 96, 96)),
                                                           mm.Case("cpu", "bfloat16", "torch", (96, 96, 96))]


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
    (["train-step", "--configs", "huge"], "unknown config huge"),
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


def run_matmul(argv: list[str], capsys) -> tuple[int, str, str]:
    """`python -m benchmarks matmul ...` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as info:
        run(main, ["matmul", *argv], prog="python -m benchmarks")
    out, err = capsys.readouterr()
    return info.value.code, out, err


TINY = ["--sizes", "32,64", "--min-time", "0.02", "--repeat", "2", "--threads", "1"]


def test_matmul_command_writes_well_formed_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mm, "REFERENCE_SIZE", 48)  # a reference case not in --sizes, measured anyway
    code, out, _ = run_matmul([*TINY, "--check-timer", "64", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 0
    assert "torch.utils.benchmark.Timer" in out and "numpy" in out
    df = pd.read_csv(tmp_path / "matmul.csv")
    assert set(df["lib"]) == {"torch", "numpy"} and len(df) == 4 and (df["gflops"] > 0).all()
    assert {"wall_ms", "wall_iqr_ms", "wall_q1_ms", "wall_q3_ms", "cpu_ms", "cpu_per_wall", "cold_ms", "rel_error",
            "share_of_peak"} <= set(df)
    assert (df["wall_q1_ms"] <= df["wall_ms"]).all() and (df["wall_ms"] <= df["wall_q3_ms"]).all()
    doc = json.loads((tmp_path / "matmul.json").read_text())
    assert doc["environment"]["torch_threads"] == 1 and "numpy_blas" in doc["environment"]
    assert len(doc["results"]) == 4 and "48" not in set(df["size"].astype(str))  # the reference is no row
    ref = doc["cpu_peak"]["float32"]
    source = "reference measurement: torch float32 48x48x48 on 1 thread(s), median of"
    assert ref["size"] == 48 and ref["threads"] == 1 and ref["blocks"] >= 2 and ref["source"].startswith(source)
    assert ref["gflops"] == pytest.approx(2 * 48**3 / (ref["wall_ms"] / 1e3) / 1e9)
    assert doc["peaks"] == [{"device": "cpu", "dtype": "float32", "peak_gflops": pytest.approx(ref["gflops"]),
                             "peak_source": ref["source"]}]
    assert df["share_of_peak"].tolist() == pytest.approx((df["gflops"] / ref["gflops"]).tolist())
    assert f"peak cpu float32: {GFLOPS.text(ref['gflops'], True)} ({source}" in out
    assert (tmp_path / "matmul.png").read_bytes()[:4] == b"\x89PNG"


def test_the_reference_case_is_reused_when_sizes_has_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mm, "REFERENCE_SIZE", 64)
    timed = []
    real_run = mm.run
    monkeypatch.setattr(mm, "run", lambda cases, *a, **k: timed.append(cases) or real_run(cases, *a, **k))
    assert run_matmul([*TINY, "--libs", "torch", "--out", str(tmp_path), "--no-progress"], capsys)[0] == 0
    assert [c.size[0] for c in timed[0]] == [32, 64]  # nothing measured twice
    doc = json.loads((tmp_path / "matmul.json").read_text())
    row = next(r for r in doc["results"] if r["size"] == "64")
    assert doc["cpu_peak"]["float32"]["gflops"] == pytest.approx(row["gflops"], rel=1e-12)
    assert row["share_of_peak"] == pytest.approx(1.0)


def test_a_given_cpu_peak_is_used_and_nothing_extra_is_measured(tmp_path, capsys, monkeypatch):
    timed = []
    real_run = mm.run
    monkeypatch.setattr(mm, "run", lambda cases, *a, **k: timed.append(cases) or real_run(cases, *a, **k))
    code, out, _ = run_matmul([*TINY, "--libs", "torch", "--cpu-peak-gflops", "250", "--out", str(tmp_path),
                               "--no-progress"], capsys)
    assert code == 0 and [c.size[0] for c in timed[0]] == [32, 64]
    doc = json.loads((tmp_path / "matmul.json").read_text())
    assert doc["cpu_peak"]["float32"] == {"gflops": 250.0, "source": "given on the command line (--cpu-peak-gflops)",
                                          "size": None, "threads": None, "blocks": None, "wall_ms": None}
    assert "peak cpu float32: 250.0 GFLOP/s (given on the command line (--cpu-peak-gflops))" in out
    assert [r["share_of_peak"] for r in doc["results"]] == pytest.approx([r["gflops"] / 250 for r in doc["results"]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA says")
def test_without_a_gpu_matmul_says_so_and_what_to_run(tmp_path, capsys):
    code, out, err = run_matmul([*TINY, "--cpu-peak-gflops", "100", "--out", str(tmp_path)], capsys)
    assert code == 0
    line = "no CUDA GPU found: CPU only. On a GPU machine run: python -m benchmarks matmul --devices cpu,cuda"
    assert line in out.splitlines()
    header = out.splitlines()[0].split()
    assert "speedup_vs_cpu" not in header and "gflops" in header and "None" not in out and "NaN" not in out
    doc = json.loads((tmp_path / "matmul.json").read_text())
    assert doc["crossover"] == {"note": "no GPU: nothing to cross over"} and doc["gpu"] is False
    # stderr is no terminal here: a plain line per case, and no bar redrawn with carriage returns
    assert "\r" not in err and [x.split(":")[0] for x in err.splitlines()] == [f"matmul {i}/4" for i in (1, 2, 3, 4)]


def test_quiet_prints_the_table_and_the_paths_only(tmp_path, capsys):
    code, out, err = run_matmul([*TINY, "--cpu-peak-gflops", "100", "--check-timer", "64", "-q", "--out",
                                 str(tmp_path)], capsys)
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == 1 + 4 + 1, out  # header, 4 rows, the paths
    assert lines[0].split()[:3] == ["device", "dtype", "lib"] and lines[-1].startswith("wrote ")
    assert lines[-1].endswith("matmul.png") and (tmp_path / "matmul.json").exists()


def synthetic_with_peaks() -> pd.DataFrame:
    """synthetic() with quartiles and both peaks, as the CLI hands it to the plot."""
    df = synthetic().assign(wall_q1_ms=lambda d: d["wall_ms"] * 0.9, wall_q3_ms=lambda d: d["wall_ms"] * 1.2)
    return mm.add_comparisons(df, {"float32": mm.CpuPeak(30.0, "given on the command line (--cpu-peak-gflops)")},
                              gpu_name="NVIDIA H100 80GB HBM3")


def test_matmul_png_has_time_and_rate_panels_with_iqr_bars_and_peak_lines():
    from matplotlib.container import ErrorbarContainer

    from benchmarks.report import matmul_figure

    df = synthetic_with_peaks()
    fig = matmul_figure(df, {"cuda float32": "512"})
    time_ax, rate_ax = fig.axes  # exactly two panels
    assert "ms" in time_ax.get_ylabel() and "GFLOP/s" in rate_ax.get_ylabel()
    assert "Wall time" in time_ax.get_title() and "Throughput" in rate_ax.get_title()
    assert time_ax.get_xscale() == time_ax.get_yscale() == "log"
    for ax, column in ((time_ax, "wall_ms"), (rate_ax, "gflops")):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert sorted(c.get_label() for c in bars) == ["cpu float32 torch", "cuda float32 torch"]
        cpu = next(c for c in bars if c.get_label().startswith("cpu"))
        line, _, (segments,) = cpu.lines
        assert list(line.get_ydata()) == pytest.approx(df[df["device"] == "cpu"][column].tolist())
        # IQR bars: from Q1 to Q3 of the wall time (for the rate: the rate at Q3 to the rate at Q1)
        spans = [v for a, b in segments.get_segments() for v in sorted((a[1], b[1]))]
        rows = df[df["device"] == "cpu"]
        q1, q3 = rows["wall_q1_ms"], rows["wall_q3_ms"]
        if column == "gflops":
            q1, q3 = 2 * rows["m"] ** 3 / q3 / 1e6, 2 * rows["m"] ** 3 / q1 / 1e6
        assert spans == pytest.approx([v for pair in zip(q1, q3) for v in pair])
    peak_lines = {ln.get_label(): ln for ln in rate_ax.get_lines() if ln.get_label().startswith("peak")}
    assert len(peak_lines) == 2 and all(ln.get_linestyle() == "--" for ln in peak_lines.values())
    cpu_peak = next(label for label in peak_lines if label.startswith("peak cpu float32"))
    assert "30.0 GFLOP/s" in cpu_peak and "--cpu-peak-gflops" in cpu_peak
    assert list(peak_lines[cpu_peak].get_ydata()) == [30.0, 30.0]
    assert any("spec sheet" in label and "67,000.0" in label for label in peak_lines)
    assert not [ln for ln in time_ax.get_lines() if ln.get_label().startswith("peak")]


def _options(parser, path=()):
    """(command path, option strings, help) of every option of a parser and of its subcommands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action.option_strings, action.help


def test_every_flag_of_every_subcommand_has_help():
    from benchmarks.__main__ import build_parser

    options = list(_options(build_parser()))
    commands = {p for p, _, _ in options}
    assert {("matmul",), ("train-step",), ("vs-course",), ("tuner", "record"), ("tuner", "replay")} <= commands
    for path, flags, text in options:
        words = (text or "").replace("-", " ").split()
        bare = {f.lstrip("-").replace("-", " ") for f in flags}
        assert text and len(words) >= 3 and text.strip() not in bare, (path, flags, text)
    quiet = [(p, f) for p, f, _ in options if "--quiet" in f]
    assert sorted(p for p, f in quiet) == sorted(commands) and all("-q" in f for _, f in quiet)


def test_cli_runs_main_as_python_m_does_under_its_own_name(tmp_path, capsys, monkeypatch):
    from benchmarks.__main__ import cli

    monkeypatch.setattr(sys, "argv", ["gptcore-bench", "matmul", "--sizes", "64,abc"])
    with pytest.raises(SystemExit) as info:
        cli()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("gptcore-bench matmul: error: argument --sizes") and \
        len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(sys, "argv", ["gptcore-bench", "matmul", *TINY, "--libs", "numpy", "--cpu-peak-gflops",
                                      "9", "-q", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        cli()
    assert info.value.code == 0 and (tmp_path / "matmul.csv").exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A `tiny` preset checkpoint trained for a few steps on the shipped corpus."""
    from gptcore.__main__ import main as gptcore_main
    from tests.conftest import CORPUS

    out = tmp_path_factory.mktemp("inference") / "ck"
    with pytest.raises(SystemExit) as info:
        run(gptcore_main, ["train", "--data", str(CORPUS), "--out", str(out), "--preset", "tiny", "--max-iters", "20",
                           "--device", "cpu", "--no-progress", "-q"])
    assert info.value.code == 0
    return out


INFERENCE = ["--max-new-tokens", "6", "--repeat", "2", "--eval-batches", "2", "--threads", "1", "--no-progress"]


def test_inference_measures_every_precision_side_by_side(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, ["inference", "--checkpoint", str(tiny_checkpoint), *INFERENCE, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert "tokens/s" in table[0] and "weights MiB" in table[0] and "Δ val loss vs float32" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["float32", "bfloat16", "float16", "int8"]
    rows = {r["precision"]: r for r in json.loads((tmp_path / "inference.json").read_text())["results"]}
    assert rows["float32"]["val_loss_delta"] == 0 and all(r["repeats"] == 2 for r in rows.values())
    assert rows["bfloat16"]["weights_MiB"] == rows["float16"]["weights_MiB"] == rows["float32"]["weights_MiB"] / 2
    assert rows["int8"]["weights_MiB"] < rows["bfloat16"]["weights_MiB"]
    for r in rows.values():  # lower precision moves the loss a little, not by a different model's amount
        assert r["tokens_per_s"] > 0 and abs(r["val_loss_delta"]) < 0.05
        assert r["val_loss"] == pytest.approx(rows["float32"]["val_loss"] + r["val_loss_delta"])
    doc = json.loads((tmp_path / "inference.json").read_text())
    assert doc["environment"]["torch_threads"] == 1 and doc["settings"]["max_new_tokens"] == 6
    assert len(pd.read_csv(tmp_path / "inference.csv")) == 4


def test_inference_always_measures_the_float32_baseline(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, ["inference", "--checkpoint", str(tiny_checkpoint), *INFERENCE, "--precisions", "int8", "-q",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert list(pd.read_csv(tmp_path / "inference.csv")["precision"]) == ["float32", "int8"]
    assert not out.startswith(str(tiny_checkpoint))  # -q: no heading line, the table and the paths only


@pytest.mark.parametrize("argv, needle", [
    (["--precisions", "int4"], "argument --precisions: unknown precision int4; choose from float32, bfloat16"),
    (["--repeat", "0"], "argument --repeat: expected a positive integer"),
    (["--checkpoint", "nowhere"], "nowhere: no such checkpoint folder"),
    (["--data", "OTHER"], "its vocabulary is not the checkpoint's"),
])
def test_bad_inference_input_is_one_line_exit_2_and_writes_nothing(argv, needle, tiny_checkpoint, tmp_path,
                                                                    capsys):
    other = tmp_path / "other.txt"
    other.write_text("abc def " * 400)
    argv = [str(other) if a == "OTHER" else a for a in argv]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run(main, ["inference", "--checkpoint", str(tiny_checkpoint), *INFERENCE, "--out", str(out), *argv],
            prog="python -m benchmarks")
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_point_of_the_small_space_is_baby_s_training_at_that_shape():
    from benchmarks import train_step
    from gptcore.config import from_name

    m, t = train_step._config("small-max", device="cpu")
    baby_m, baby_t = from_name("baby")
    assert (t.batch_size, m.block_size, m.n_embed, m.n_head, m.n_layer) == (32, 128, 256, 8, 4)
    assert (t.learning_rate, m.dropout, t.device) == (baby_t.learning_rate, baby_m.dropout, "cpu")
    assert train_step._config("baby") == from_name("baby")
