"""The benchmarks' tools: CPU/wall of the same calls, vs-course's paired ratios, train-step rows, prepare's memory.

Structure and arithmetic only, on tiny sizes: no test asserts a speed.
"""

from __future__ import annotations

import io
import json
import lzma
import math
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import prepare_memory, train_step, vs_course
from benchmarks.clocks import CpuClock
from benchmarks.conftest import record
from benchmarks.stats import cpu_per_wall, quartiles
from gptcore.config import from_name
from gptcore.model import GPT

CORPUS = Path(__file__).resolve().parent.parent / "data" / "wizard_of_oz.txt"


def fake_clocks(threads: float):
    """A wall and a CPU clock that move only when `work(seconds)` runs, `threads` CPU seconds per wall second."""
    now = {"wall": 0.0, "cpu": 0.0}

    def work(seconds: float) -> None:
        now["wall"] += seconds
        now["cpu"] += seconds * threads

    return work, (lambda: now["wall"]), (lambda: now["cpu"])


@pytest.mark.parametrize("threads", [1.0, 2.0])
def test_cpu_per_wall_pairs_the_same_calls_despite_a_slow_first_call(threads):
    """A slow first call (first-use costs) and many fast ones: CPU/wall is the threads' count, no more.

    The old formula, mean CPU per call (first call included) over pytest-benchmark's median wall time, gives
    10.9 x threads here; any ratio of the same calls' CPU and wall time gives the threads' count.
    """
    work, wall, cpu = fake_clocks(threads)
    clock = CpuClock(work, wall=wall, cpu=cpu)
    for seconds in [1.0] + [0.01] * 9:
        clock(seconds)
    s = clock.summary()
    assert s["cpu_per_wall"] == pytest.approx(threads)
    # The first call is reported on its own; the per-call means cover the other nine.
    assert s["first_call_seconds"] == pytest.approx(1.0) and s["calls"] == 9
    assert s["wall_seconds_per_call"] == pytest.approx(0.01)
    assert s["cpu_seconds_per_call"] == pytest.approx(threads * 0.01)
    one = CpuClock(work, wall=wall, cpu=cpu)
    one(0.5)  # --benchmark-disable calls once: that call is all there is
    assert one.summary()["calls"] == 1 and one.summary()["cpu_per_wall"] == pytest.approx(threads)


_REAL = """
import json, time
from benchmarks.clocks import CpuClock

def busy(seconds):
    end = time.process_time() + seconds  # spin until this thread has had `seconds` of CPU
    while time.process_time() < end:
        pass

out = {}
for name, fn in (("busy", busy), ("sleep", time.sleep)):
    clock = CpuClock(fn)
    for _ in range(5):
        clock(0.02)
    out[name] = clock.summary()["cpu_per_wall"]
print(json.dumps(out))
"""


def test_cpu_per_wall_of_a_busy_thread_and_a_sleeping_one():
    """Real clocks in a one-thread process (no idle thread pools spinning): busy <= 1 core, sleeping ~ 0."""
    proc = subprocess.run([sys.executable, "-c", _REAL], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    # One thread cannot use more than one core; how much of one it gets depends on the machine's load.
    assert 0.1 < r["busy"] <= 1.05, r
    assert r["sleep"] < 0.1 and r["busy"] > 5 * r["sleep"], r


def test_cpu_per_wall_refuses_unpaired_samples():
    assert cpu_per_wall([2.0, 4.0], [1.0, 2.0]) == pytest.approx(2.0)
    assert cpu_per_wall([0.0], [0.0]) is None
    with pytest.raises(ValueError, match="paired"):
        cpu_per_wall([1.0, 2.0], [1.0])


def test_record_takes_the_ratio_from_the_clock_and_rates_from_the_median():
    work, wall, cpu = fake_clocks(2.0)
    clock = CpuClock(work, wall=wall, cpu=cpu)
    clock(0.5)
    bench = SimpleNamespace(extra_info={}, stats=SimpleNamespace(stats=SimpleNamespace(median=0.25)))
    record(bench, clock, flops=1e9, tokens=100)
    assert bench.extra_info["cpu_per_wall"] == pytest.approx(2.0)
    assert bench.extra_info["gflops"] == pytest.approx(4.0) and bench.extra_info["tokens_per_s"] == pytest.approx(400)
    disabled = SimpleNamespace(extra_info={}, stats=None)  # --benchmark-disable: one call, no statistics
    record(disabled, clock, flops=1e9, tokens=100)
    assert disabled.extra_info["cpu_per_wall"] == pytest.approx(2.0) and "gflops" not in disabled.extra_info


def test_vs_course_ratio_is_the_median_of_paired_rounds():
    """Known inputs where the median of per-round ratios differs from the ratio of the medians."""
    rates = {"gptcore": [2.0, 4.0, 9.0], "course": [1.0, 4.0, 3.0]}
    row = vs_course._summary("train tokens/s", rates, rates["course"], dtype="float32")
    assert row["speedup"] == pytest.approx(2.0)  # ratios 2, 1, 3 (the medians' ratio would be 4/3)
    assert row["gptcore_median"] == 4.0 and row["course_median"] == 3.0
    q1, _, q3 = quartiles(rates["gptcore"])
    assert row["gptcore_iqr"] == pytest.approx(q3 - q1) and row["dtype"] == "float32"


def _sane_summary(row: dict) -> None:
    assert math.isfinite(row["speedup"]) and row["speedup"] > 0, row
    for name in ("gptcore", "course"):
        if f"{name}_median" in row:
            assert row[f"{name}_median"] > 0 and row[f"{name}_iqr"] >= 0, row


def test_vs_course_train_speed_rounds_and_run_table(data):
    m, t = from_name("tiny")
    cfg = m.with_vocab(data.vocab_size)
    rates = vs_course.train_speed(cfg, data, t.batch_size, "float32", steps=2, rounds=3, warmup=1, progress=False)
    assert set(rates) == {"gptcore", "course"}
    assert all(len(v) == 3 and all(math.isfinite(r) and r > 0 for r in v) for v in rates.values())
    row = vs_course._summary("train tokens/s", rates, rates["course"])
    for name, values in rates.items():
        assert min(values) <= row[f"{name}_median"] <= max(values)
    df = vs_course.run(data, str(CORPUS), cfg, t.batch_size, dtypes=("float32", "bfloat16"), dropouts=(0.0,),
                       steps=1, rounds=2, progress=False)
    # float32 and bfloat16 against the course at the same dtype, bfloat16 against the course's float32, the reader.
    assert df["baseline"].tolist() == ["course float32", "course bfloat16", "course float32", "course reader"]
    assert df["what"].tolist() == ["train tokens/s"] * 3 + ["batches/s"]
    for row in df.to_dict("records"):
        _sane_summary({k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))})


def test_vs_course_reader_speed(data):
    row = vs_course.reader_speed(data, str(CORPUS), 4, 16, calls=5, rounds=3)
    assert row["what"] == "batches/s" and row["baseline"] == "course reader"
    _sane_summary(row)


def test_train_step_row_is_consistent(data):
    df = train_step.run(["tiny"], ["cpu"], {"cpu": ["float32"]}, data, steps=2, warmup=1, progress=False)
    assert len(df) == 1
    r = df.iloc[0]
    m, t = from_name("tiny")
    assert (r["config"], r["device"], r["dtype"], r["batch"], r["block"], r["steps"]) == (
        "tiny", "cpu", "float32", t.batch_size, m.block_size, 2)
    model = GPT(m.with_vocab(data.vocab_size))
    assert r["params_M"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, rel=0.05)
    assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
    assert r["ms_per_step"] > 0 and math.isfinite(r["ms_per_step"])
    flops_per_token = model.flops_per_token()
    assert r["achieved_tflops"] == pytest.approx(flops_per_token * r["tokens_per_s"] / 1e12)
    assert r["peak_rss_MiB"] > 0 and r["threads"] == torch.get_num_threads()
    # Measured for contention like matmul (#24.14): what other processes took of its cores, and a flag or none.
    assert r["others_cores"] >= 0 and "contended" in df


def test_a_contended_train_step_case_is_named_in_the_warning():
    import pandas as pd

    from benchmarks.report import contention_lines

    df = pd.DataFrame([{"config": "baby", "arch": "course", "device": "cpu", "dtype": "float32", "compile": "none",
                        "contended": "other processes kept 1.0 of its 1 own core(s) busy"},
                       {"config": "tiny", "arch": "course", "device": "cpu", "dtype": "float32", "compile": "none",
                        "contended": None}])
    [warning] = contention_lines(df)
    assert "1 of 2 case(s)" in warning and "baby course cpu float32 none" in warning and "tiny" not in warning


def test_prepare_memory_shard_is_an_xz_tar_of_documents(tmp_path):
    path = tmp_path / "s.xz"
    written = prepare_memory.make_shard(str(path), 4000, 3, seed=1)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(path.read_bytes()))) as tar:
        members = tar.getmembers()
        bodies = [tar.extractfile(m).read() for m in members]
    assert [m.name for m in members] == [f"00001-{d:04d}.txt" for d in range(3)]
    assert written == sum(len(b) for b in bodies) >= 4000 - 3  # each document reaches its share of the bytes
    assert all(b.decode().strip() for b in bodies)


def test_prepare_memory_measures_prepare(tmp_path, capsys):
    """End to end on two tiny shards: the figures printed and measured are positive and consistent."""
    assert prepare_memory.main(["--gb", "0.00002", "--shards", "2", "--workers", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"workers 1: ([\d.]+) s, ([\d.]+) M chars/s of text, peak RSS of the largest process (\d+) MiB",
                     out)
    assert line and float(line.group(3)) > 0, out
    src = tmp_path / "shards"
    assert sorted(p.name for p in src.iterdir()) == ["shard_0000.xz", "shard_0001.xz"]
    r = prepare_memory.measure(src, tmp_path / "again", 1)
    assert r["workers"] == 1 and r["seconds"] > 0 and r["peak_rss_mib"] > 0
    text = sum(len(lzma.decompress(p.read_bytes())) for p in src.iterdir())  # tar bytes: text plus headers
    assert 0 < r["tokens"] < text


@pytest.mark.parametrize("argv", [["--workers", "a"], ["--workers", "0,2"], ["--gb", "nan"], ["--shards", "-1"]])
def test_prepare_memory_bad_flags_are_one_line_and_exit_2(argv, tmp_path, capsys):
    from benchmarks import prepare_memory
    from gptcore.cliutil import run

    with pytest.raises(SystemExit) as info:
        run(prepare_memory.main, [*argv, "--dir", str(tmp_path / "bench")], prog="python -m benchmarks.prepare_memory")
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and f"argument {argv[0]}" in err[0]
    assert not (tmp_path / "bench").exists()


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_a_bar_on_a_terminal_lines_elsewhere_and_off_when_asked(capsys):
    from benchmarks import progress

    assert progress.choose(stream=_Stream(True)) == "bar" and progress.choose(stream=_Stream(False)) == "lines"
    assert progress.choose(no_progress=True, stream=_Stream(True)) == "off"
    assert progress.choose(quiet=True, stream=_Stream(False)) == "off"
    assert [progress.as_mode(x) for x in (True, False, "lines")] == ["bar", "off", "lines"]
    with pytest.raises(ValueError, match="progress must be"):
        progress.as_mode("loud")
    assert list(progress.bar(range(3), "lines", "x", "case")) == [0, 1, 2]
    progress.line("off", "hidden")
    progress.line("bar", "hidden too")
    progress.line("lines", "shown")
    counter = progress.LineCounter("lines", "replay", total=7, every=3, unit="studies")
    for _ in range(7):
        counter.update(1)
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
    assert err.splitlines() == ["shown", "replay: 3/7 studies", "replay: 6/7 studies", "replay: 7/7 studies"]


def test_the_cpu_time_run_records_no_rate_from_its_cpu_median():
    """A CPU-time median is no wall time: GFLOP/s and tokens/s come from the wall run only."""
    work, wall, cpu = fake_clocks(2.0)
    clock = CpuClock(work, wall=wall, cpu=cpu)
    clock(0.5)
    bench = SimpleNamespace(extra_info={}, stats=SimpleNamespace(stats=SimpleNamespace(median=1.0)))
    record(bench, clock, flops=1e9, tokens=100, timer="cpu time")
    assert bench.extra_info["cpu_per_wall"] == pytest.approx(2.0) and bench.extra_info["timer"] == "cpu time"
    assert "gflops" not in bench.extra_info and "tokens_per_s" not in bench.extra_info


def test_pytest_benchmark_shows_cpu_time_in_its_table_and_in_compare(tmp_path):
    """One tiny case on both clocks: two groups in the table, the JSON and `pytest-benchmark compare`."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench.json"
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_bench_matmul.py", "-q", "-p",
                           "no:cacheprovider", "-k", "torch_cpu and 128", "--benchmark-json", str(out),
                           "--benchmark-columns=min,median,iqr,ops,rounds", "--benchmark-sort=name"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "benchmark 'matmul 128x128 float32, wall'" in table
    assert "benchmark 'matmul 128x128 float32, cpu time'" in table
    assert re.search(r"test_matmul_torch_cpu\[128-cpu-time\]\s+CPU/wall\s+\d\.\d\d\s+on \d+ thread", table), table
    doc = json.loads(out.read_text())
    runs = {b["group"]: b for b in doc["benchmarks"]}
    assert set(runs) == {"matmul 128x128 float32, wall", "matmul 128x128 float32, cpu time"}
    assert runs["matmul 128x128 float32, cpu time"]["options"]["timer"] == "process_time"
    assert runs["matmul 128x128 float32, wall"]["options"]["timer"] == "perf_counter"
    assert "gflops" in runs["matmul 128x128 float32, wall"]["extra_info"]
    assert runs["matmul 128x128 float32, cpu time"]["extra_info"]["cpu_per_wall"] > 0
    again = tmp_path / "again.json"  # compare needs two files: one named twice is loaded once, then fails
    again.write_text(out.read_text())
    compare = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out), str(again),
                              "--columns=median,iqr", "--group-by=group"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
    assert compare.returncode == 0, compare.stderr
    assert "benchmark 'matmul 128x128 float32, cpu time'" in compare.stdout
    assert "benchmark 'matmul 128x128 float32, wall'" in compare.stdout


def test_train_step_without_a_gpu_says_so_and_quiet_keeps_the_table(prepared, tmp_path, capsys, monkeypatch):
    from benchmarks.__main__ import main, no_gpu_line
    from gptcore.cliutil import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = "no CUDA GPU found: CPU only. On a GPU machine run: python -m benchmarks train-step --devices cpu,cuda"
    assert no_gpu_line("train-step", ["cpu"]) == line and no_gpu_line("matmul", ["cpu", "cuda"]) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert no_gpu_line("matmul", ["cpu"]).startswith("CPU only (--devices cpu). On a GPU machine run:")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train-step", "--configs", "tiny", "--dtypes", "float32", "--compile", "none", "--steps", "1",
            "--threads", "1",
            "--data", str(prepared), "--out", str(tmp_path)]
    for quiet in (False, True):
        with pytest.raises(SystemExit) as info:
            run(main, [*argv, *(["-q"] if quiet else [])], prog="python -m benchmarks")
        out, err = capsys.readouterr()
        assert info.value.code == 0, err
        assert (line in out.splitlines()) is not quiet and out.splitlines()[-1].startswith("wrote ")
        assert "tokens_per_s" in out.splitlines()[0] and "\r" not in err
        header = out.splitlines()[0].split()  # a table a person reads: no column of blanks, no "None"
        assert "None" not in out and "peak_allocated_MiB" not in header and "mfu" not in header
        assert err.startswith("train-step 1/1: tiny course cpu float32 none: ") if not quiet else err == ""


def test_replay_off_a_terminal_prints_a_line_per_strategy_and_quiet_prints_none(tmp_path, capsys):
    from test_tuner_replay import synthetic_table

    from benchmarks.__main__ import main
    from gptcore.cliutil import run

    table = synthetic_table(tmp_path)
    argv = ["tuner", "replay", "--table", str(table), "--seeds", "2", "--trials", "6", "--strategies",
            "random+none", "--out", str(tmp_path / "o")]
    for quiet in (False, True):
        with pytest.raises(SystemExit) as info:
            run(main, [*argv, *(["-q"] if quiet else [])], prog="python -m benchmarks")
        out, err = capsys.readouterr()
        assert info.value.code == 0, err
        # today's defaults are added to every comparison: two strategies of two seeds each
        assert err.splitlines() == ([] if quiet else ["replay: 2/4 studies", "replay: 4/4 studies"]), err
        assert out.splitlines()[-1].startswith("wrote ") and "note:" not in (out if quiet else "")
