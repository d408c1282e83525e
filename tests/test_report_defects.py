"""The reports' defects (#21.6, #24.13-15): one units table, one study time span, the memory skip margin from
evidence, the reports' rough edges, and the benchmarks' contention guard."""

from __future__ import annotations

import io
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from benchmarks import matmul as mm
from benchmarks.report import print_table
from benchmarks.stats import contended
from gptcore.memory import Calibration
from tests.test_card import TRIALS, make_study, matmul_doc
from tune.core import units
from tune.exec.console import Console
from tune.memory.judge import (
    DEFAULT_MARGIN,
    MARGIN_RANGE,
    SKIP_MARGIN,
    Margin,
    Verdict,
    record_fields,
    skip_margin,
)
from tune.report.card import sections
from tune.report.card.command import main as card_main
from tune.report.card.html import CSS, table
from tune.report.card.matmul import from_doc
from tune.report.compare.data import load_sides
from tune.report.compare.render import markdown
from tune.report.frame import COLUMNS, label, time_span
from tune.report.memreport import memory_section
from tune.report.outputs import write_report
from tune.report.plots import history_plot, loss_vs_memory_plot, rungs_plot, throughput_plot
from tune.store.storage import reference_study_name

ROOT = Path(__file__).resolve().parent.parent
MiB = units.MiB
LOSS = 2.236634  # 2.237 to 4 significant digits, 2.2366 to 4 decimals: one rounding must win everywhere


# --- one units table (#21.6) ----------------------------------------------------------------------------------


def test_a_unit_writes_its_figure_with_one_rounding_and_a_dash_when_missing():
    assert units.LOSS.text(LOSS) == "2.2366" and units.LOSS.value(LOSS) == 2.2366
    assert units.MIB.text(400.4 * units.MiB, unit=True) == "400 MiB"
    assert units.GIB.text(80 * units.GiB, unit=True) == "80.0 GiB"
    assert [units.KTOK.text(v) for v in (213.4, 12_000, 1_234_567)] == ["0.213", "12.0", "1,235"]
    assert units.LR.text(2e-3) == "2.00e-03" and units.SHARE.text(0.423) == "42%"
    assert units.ERROR.text(-0.1234, sign=True) == "-12.3%" and units.ERROR.text(0.05, sign=True) == "+5.0%"
    assert all(units.MIB.text(v) == "-" for v in (None, float("nan"), "n/a", True))
    assert units.figure("val_loss", LOSS) == units.figure("rung_loss", LOSS) == "2.2366"


def test_a_unit_without_a_valid_scale_or_style_is_refused():
    with pytest.raises(ValueError, match="scale 0 must be > 0"):
        units.Unit("x", 0, 1)
    with pytest.raises(ValueError, match="style 'g' one of"):
        units.Unit("x", 1, 1, "g")
    with pytest.raises(KeyError, match="no unit for it"):
        units.figure("nonsense", 1.0)


SCALES = re.compile(r"2\s*\*\*\s*(20|30)|1024\s*\*\*|/\s*1e9\b")


def _scales_outside_units(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Lines of `paths` that apply a byte or GFLOP scale themselves (outside tune/core/units.py), comments aside."""
    return [f"{path.relative_to(root)}:{n}: {line.strip()}" for path in paths
            for n, line in enumerate(path.read_text().splitlines(), start=1) if SCALES.search(line.split("#")[0])]


def test_no_report_defines_its_own_byte_scale():
    reports = [*(ROOT / "tune" / "report").rglob("*.py"), ROOT / "tune" / "memory" / "judge.py",
               ROOT / "tune" / "exec" / "console.py", ROOT / "benchmarks" / "report.py"]
    assert _scales_outside_units(reports) == []


def test_the_scale_finder_finds_a_scale(tmp_path):
    (tmp_path / "x.py").write_text("a = 5 / 2**20  # MiB\nb = 7 * 3  # not 2**20\n")
    assert _scales_outside_units([tmp_path / "x.py"], tmp_path) == ["x.py:1: a = 5 / 2**20  # MiB"]


def _with_loss(loss: float) -> list:
    """test_card's trials with the winner's loss set to `loss`."""
    status, cfg, figures = TRIALS[1]
    return [TRIALS[0], (status, cfg, {**figures, "val_loss": loss}), *TRIALS[2:]]


def test_a_loss_reads_the_same_in_summary_md_and_on_the_card(tmp_path):
    study = make_study(tmp_path / "s1", trials=_with_loss(LOSS))
    write_report(study, tmp_path / "s1", plots=False)
    summary = (tmp_path / "s1" / "summary.md").read_text()
    assert card_main([str(tmp_path / "s1"), "--results", str(tmp_path), "-q"]) == 0
    card = (tmp_path / "s1" / "card.html").read_text()
    for text in (summary, card.split('id="card-data"')[0]):
        assert "2.2366" in text and "2.237 " not in text and "2.237)" not in text and "2.23663" not in text


# --- one study time span, in UTC (#21.6) ----------------------------------------------------------------------


@pytest.fixture
def far_from_utc(monkeypatch):
    """The machine's local time 9 hours ahead of UTC (where Optuna's naive times and UTC differ)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_study_time_span_is_utc_and_every_report_shows_the_same(tmp_path, far_from_utc):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    study = make_study(tmp_path / "s1")
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    span = time_span(study)
    assert before <= span.start <= span.end <= after and span.text().endswith(" UTC")
    write_report(study, tmp_path / "s1", plots=False)
    assert f"- trials ran from {span.text()}:" in (tmp_path / "s1" / "summary.md").read_text()
    assert card_main([str(tmp_path / "s1"), "--results", str(tmp_path), "-q"]) == 0
    assert span.text() in (tmp_path / "s1" / "card.html").read_text()
    assert f"{span.start.date()} (UTC)" in markdown(load_sides([str(tmp_path / "s1")], storage=None, results=tmp_path))


# --- the memory skip margin from evidence (#24.13) ------------------------------------------------------------


def _run(predicted_mib: float, measured_mib: float | None, status: str = "ok", batch: int = 8) -> dict:
    """A trial record that trained (or was skipped: measured None) with a prediction."""
    return {"status": status, "predicted_peak_bytes": predicted_mib * MiB, "batch_size": batch, "block_size": 64,
            "n_embed": 128, "n_head": 4, "n_layer": 2, "learning_rate": 1e-3,
            "measured_peak_bytes": None if measured_mib is None else measured_mib * MiB}


def test_the_margin_is_the_default_until_enough_runs_measured_their_prediction():
    two = [_run(105, 100), _run(210, 200)]
    assert skip_margin(two).share == DEFAULT_MARGIN.share == SKIP_MARGIN
    assert "2 measured run(s)" in skip_margin(two).why and "default" in skip_margin(two).why
    assert skip_margin([*two, _run(900, None, "predicted_oom")]).share == SKIP_MARGIN  # a skip measured nothing


def test_the_margin_is_the_largest_measured_over_prediction_within_its_range():
    runs = [_run(102, 100), _run(297, 300), _run(103, 100, batch=4)]
    margin = skip_margin(runs)
    assert margin.share == pytest.approx(0.03) and "3 measured runs" in margin.why and "+3.0%" in margin.why
    low, high = MARGIN_RANGE
    assert skip_margin([_run(99, 100)] * 3).share == low  # always under: a hair of noise is still allowed
    assert skip_margin([_run(300, 100)] * 3).share == high and "kept within" in skip_margin([_run(300, 100)] * 3).why


def test_the_verdict_uses_the_margin_it_is_given_and_the_record_says_which():
    memory, cal = {"peak_bytes": 1000 * MiB, "baseline_bytes": 50 * MiB}, Calibration()  # predicted 1050 MiB
    tight, why = Margin(0.02, "evidence"), "evidence"
    assert Verdict.judge(memory, cal, 1000 * MiB, skip=True).skip is False  # within the default 10 %
    verdict = Verdict.judge(memory, cal, 1000 * MiB, skip=True, margin=tight)
    assert verdict.skip and verdict.margin == tight
    fields = record_fields(memory, verdict, cal, 1000 * MiB)
    assert fields["mem_skip_margin"] == 0.02 and fields["mem_skip_margin_why"] == why


def test_the_memory_report_names_the_margin_and_the_false_skips():
    limit = 420 * MiB
    runs = [_run(210, 200, batch=2), _run(315, 300, batch=3), _run(400, 400, batch=4),  # largest over: +5 %
            _run(500, None, "predicted_oom", batch=4),  # shape of a run that fitted: a shown false skip
            _run(430, None, "predicted_oom", batch=5),  # 430 / 1.05 < 420: may have fitted
            _run(900, None, "predicted_oom", batch=9)]  # far over: a true skip
    for k, r in enumerate(runs):
        r.update(number=k, mem_limit_bytes=limit, mem_skip_margin=0.05, mem_skip_margin_why="the largest one")
    df = pd.DataFrame(runs).reindex(columns=COLUMNS)
    lines = "\n".join(memory_section(df, {"predict": True}, label))
    assert "3 skipped, 0 ran out of memory" in lines and "skip margin at the last judgement: 5.0%" in lines
    assert "(the largest one)" in lines
    assert re.search(r"false skips\*\*: 1 later ran and fitted \(3\); 1 may have fitted \(4: .*\+5\.0%", lines)


# --- the reports' rough edges (#24.15) --------------------------------------------------------------------------


def _summary(tmp_path: Path, **kw) -> str:
    study = make_study(tmp_path / "s1", **kw)
    write_report(study, tmp_path / "s1", plots=False)
    return (tmp_path / "s1" / "summary.md").read_text()


def _stopped_early(tmp_path: Path) -> str:
    """summary.md of a study stopped by Ctrl-C while its second reference preset ran: that run interrupted, its
    retry still queued."""
    study = make_study(tmp_path / "s1")
    refs = optuna.load_study(study_name=reference_study_name("s1"), storage=f"sqlite:///{tmp_path / 's1' / 'study.db'}")
    for state, status in ((TrialState.FAIL, "interrupted"), (TrialState.WAITING, None)):
        refs.add_trial(optuna.trial.create_trial(state=state, user_attrs={"reference": "tiny", "status": status}))
    write_report(study, tmp_path / "s1", plots=False)
    return (tmp_path / "s1" / "summary.md").read_text()


def test_the_summary_names_the_objective_one_way_and_says_one_rung_plainly(tmp_path):
    text = _summary(tmp_path)
    prose = text.split("## trials.csv")[0]
    assert "Best at the target: **trial 1**, validation loss 2.2000" in prose
    assert "val_loss " not in prose and "(val_loss" not in prose
    assert "one rung, the target itself: every trial trains to the target" in prose and "best 1/" not in prose


def test_a_study_stopped_early_counts_presets_and_says_what_a_queued_reference_is(tmp_path):
    text = _stopped_early(tmp_path)
    assert "2 reference preset(s) in 3 runs (1 ok, 1 interrupted, 1 queued)" in text
    assert "- reference `tiny`: queued, not run (the study stopped first)" in text
    assert "nan" not in text.split("## trials.csv")[0] and "reference run(s)" not in text


def _draw(plot, *args) -> dict:
    """Run a plot function with a save() that keeps its figure: {name: figure}; the note under 'note'."""
    import matplotlib

    matplotlib.use("Agg")
    kept = {}
    kept["note"] = plot(*args, lambda fig, name: kept.update({name: fig}))
    return kept


def _runs(losses: list[float], rungs: int = 1) -> pd.DataFrame:
    rows = [{"number": k, "status": "ok", "val_loss": v, "rung_loss": v, "peak_memory_bytes": (300 + k) * MiB,
             "tokens_per_s": 1000.0 + k, **{f"loss_rung_{r}": v + (rungs - r) * 0.1 for r in range(1, rungs + 1)}}
            for k, v in enumerate(losses)]
    rows += [{"reference": name, "status": "ok", "val_loss": 2.5 + i / 10, "rung_loss": 2.5, "tokens_per_s": 900.0,
              "peak_memory_bytes": 310 * MiB, "loss_rung_1": 2.6} for i, name in enumerate(("baby", "tiny"))]
    return pd.DataFrame(rows).reindex(columns=[*COLUMNS, *(f"loss_rung_{r}" for r in range(1, rungs + 1))])


def test_the_rungs_plot_is_linear_for_one_rung_and_gives_each_reference_its_colour():
    one = _draw(rungs_plot, _runs([2.4, 2.5, 2.6]), {"rungs": [1.0], "budget_amount": 8.0, "budget_unit": "s"})
    ax = one["rungs.png"].axes[0]
    assert ax.get_xscale() == "linear"
    colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_label().startswith("reference")}
    assert len(colours) == 2 and len(set(colours.values())) == 2
    three = _draw(rungs_plot, _runs([2.4, 2.5], 3), {"rungs": [1 / 9, 1 / 3, 1.0], "budget_amount": 20.0})
    ax = three["rungs.png"].axes[0]
    assert ax.get_xscale() == "log"
    # The rungs as the plan prints them (2.22 s, 6.67 s, 20 s), not 2.22222 and 6.66667.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2.22", "6.67", "20"]


def test_an_outlier_is_clipped_off_the_axis_and_the_plot_says_so():
    drawn = _draw(history_plot, _runs([2.40, 2.42, 2.45, 2.47, 2.50, 9.0]), {"objective": "loss"})
    ax = drawn["history.png"].axes[0]
    assert ax.get_ylim()[1] < 9.0 and ax.get_ylim()[1] > 2.6  # the rest keep the axis; the references too
    assert any("off the y axis (9): clipped" in t.get_text() for t in ax.texts)
    calm = _draw(history_plot, _runs([2.40, 2.42, 2.45, 2.47]), {"objective": "loss"})["history.png"].axes[0]
    assert not calm.texts and calm.get_ylim()[1] > 2.47


def test_labels_of_points_too_close_to_tell_apart_are_merged():
    drawn = _draw(loss_vs_memory_plot, _runs([2.40, 2.40, 2.9]).assign(peak_memory_bytes=300 * MiB), None)
    texts = [t.get_text() for t in drawn["loss_vs_memory.png"].axes[0].texts]
    assert "0, 1" in texts and "2" in texts and "0" not in texts


def test_a_plot_with_nothing_to_show_is_not_drawn_and_an_old_one_is_removed(tmp_path):
    empty = _runs([]).iloc[:0]
    assert "not drawn" in _draw(history_plot, empty, {})["note"]
    assert "not drawn" in _draw(throughput_plot, empty, None)["note"]
    study = make_study(tmp_path / "s1", trials=[t for t in TRIALS if t[0] == "oom"], reference=False)
    (tmp_path / "s1" / "throughput_vs_memory.png").write_bytes(b"old")
    write_report(study, tmp_path / "s1")
    assert not (tmp_path / "s1" / "throughput_vs_memory.png").exists()
    assert "throughput_vs_memory.png: not drawn" in (tmp_path / "s1" / "summary.md").read_text()


def test_the_cards_numeric_cells_do_not_wrap():
    html = table(["trial", "loss", "peak"], [["ref baby", "2.2000", "1,234"], ["3", "38.2 (96%)", "contended"]])
    assert '<td class="num">2.2000</td>' in html and '<td class="num">1,234</td>' in html
    assert '<td class="num">38.2 (96%)</td>' in html and "<td>ref baby</td>" in html and "<td>contended</td>" in html
    assert "td.num { white-space: nowrap; }" in CSS


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_counts_runs_and_ends_its_line_when_the_tuner_stops():
    stream, stop = _Terminal(), threading.Event()
    console = Console(4, progress=True, stream=stream)
    try:
        console.stopping_on(stop)
        console.started(1, "ref_baby")
        assert console.progress().startswith("running: ref_baby 0s")
        console.ended(1)
        assert "1 run done" in console.progress() and "left" in console.progress()
        stop.set()
        assert _eventually(lambda: console.bar.disable)  # closed by its timer, on its own line
        assert stream.getvalue().endswith("\n")
    finally:
        console.close()


def _eventually(check, seconds: float = 10.0) -> bool:
    """Whether `check()` holds within `seconds` (a thread's work, waited for; not a speed assertion)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


# --- the benchmarks guard against contention (#24.14) -----------------------------------------------------------


def test_a_benchmark_beside_a_busy_neighbour_is_flagged_and_its_own_idle_threads_are_not():
    alone = {"others_cores": 0.05, "cores": [1], "threads": 1, "cores_owned": True, "cpu_share": 0.2}
    assert contended(alone, "cpu") is None  # a small matmul leaving its threads idle is no neighbour
    busy = {**alone, "others_cores": 0.8}
    assert "other processes kept 0.8 of its 1 own core(s) busy" in contended(busy, "cpu")
    assert contended({**busy, "cores": [0, 1, 2, 3], "threads": 2, "others_cores": 1.5}, "cpu") is None  # spare


def _matmul_rows(devices: list[str], contention: str | None = None) -> pd.DataFrame:
    rows = [{"device": d, "dtype": "float32", "lib": "torch", "size": str(n), "m": n, "n": n, "k": n,
             "transfer": False, "wall_ms": 1.0 if d == "cpu" else 0.5, "gflops": 2 * n**3 / 1e6, "cpu_per_wall": 1.0,
             "contended": contention if d == "cpu" else None} for d in devices for n in (64, 512)]
    df = pd.DataFrame(rows)
    cpu = df[df["device"] == "cpu"].set_index("size")["wall_ms"]
    df["speedup_vs_cpu"] = [None if d == "cpu" or s not in cpu else cpu[s] / w
                            for d, s, w in zip(df["device"], df["size"], df["wall_ms"])]
    return df


def test_a_gpu_only_matmul_run_claims_no_crossover_and_says_why():
    gpu_only = _matmul_rows(["cuda"])
    assert mm.crossover(gpu_only, transfer=False) == {}  # not "the GPU never beats the CPU"
    assert "no CPU measured" in mm.no_cpu_note(gpu_only)["note"]
    both = _matmul_rows(["cpu", "cuda"])
    assert mm.crossover(both, transfer=False) == {"cuda float32": "64"} and mm.no_cpu_note(both) is None


def test_the_matmul_table_flags_contended_cases_and_warns(capsys):
    print_table(_matmul_rows(["cpu"], "other processes kept 0.8 of its 1 own core(s) busy"))
    out = capsys.readouterr().out
    assert "contended" in out.splitlines()[0] and "warning: 2 of 2 case(s) ran while other processes" in out
    print_table(_matmul_rows(["cpu"]))
    out = capsys.readouterr().out
    assert "contended" not in out and "warning" not in out


def test_the_cpu_time_benchmarks_are_grouped_as_cpu_time():
    from benchmarks.conftest import TIMERS, group

    ids = [p.id for p in TIMERS]
    assert ids == ["wall", "cpu-time"] and group("matmul 128x128 float32", "cpu time").endswith(", cpu time")


def test_the_card_of_a_gpu_only_matmul_file_claims_no_crossover():
    doc = matmul_doc({"gpu": "H200"}, [("cuda", "float32", 64, 500.0), ("cuda", "float32", 512, 900.0)],
                     crossover={"note": "no CPU measured (--devices): no crossover to report"})
    m = from_doc(doc, "given")
    assert m.crossover == {}
    html = sections.matmul({"matmul": {"source": "given", "note": None, "missing": None, "rows": m.rows,
                                       "peaks": m.peaks, "crossover": m.crossover},
                            "environment": {"device_name": "H200"}})
    assert "no CPU in these measurements" in html and "never beats" not in html


def test_markdown_tables_right_align_figures_and_left_align_text():
    from tune.report.frame import markdown_table

    table = pd.DataFrame({"trial": ["1", "12"], "shape": ["4 x 32", "8 x 64"], "lr": ["1.03e-03", "2.00e-04"],
                          "error": ["-9.3%", None], "k tok/s": ["1,234", "57.6"]})
    header, rule, *_ = markdown_table(table).splitlines()
    align = ["right" if c.strip().endswith(":") and not c.strip().startswith(":") else "left"
             for c in rule.strip("|").split("|")]
    assert align == ["right", "left", "right", "right", "right"]
    assert header.split("|")[1] == "   trial "  # the figure column's name sits right too


def test_the_throughput_plot_keeps_the_fastest_run_in_view():
    # One configuration 6x faster than the rest is the plot's news, not an outlier to clip (a study's fastest
    # trial, 156 k tokens/s beside 4-50 k, was drawn off the axis).
    runs = _runs([2.4, 2.5, 2.6, 2.7, 2.8]).assign(tokens_per_s=[5_000.0, 6_000.0, 7_000.0, 8_000.0, 156_000.0,
                                                                 4_000.0, 4_500.0])
    ax = _draw(throughput_plot, runs, None)["throughput_vs_memory.png"].axes[0]
    assert ax.get_ylim()[0] <= 4_000 and ax.get_ylim()[1] >= 156_000
    assert ax.get_yscale() == "log" and not any("clipped" in t.get_text() for t in ax.texts)
