"""The reports' defects (#21.6, #24.13-15): one units table, one study time span, the memory skip margin from
evidence, the reports' rough edges, and the benchmarks' contention guard."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from gptcore.memory import Calibration
from tests.test_card import TRIALS, make_study
from tune.core import units
from tune.memory.judge import (
    DEFAULT_MARGIN,
    MARGIN_RANGE,
    SKIP_MARGIN,
    Margin,
    Verdict,
    record_fields,
    skip_margin,
)
from tune.report.card.command import main as card_main
from tune.report.compare.data import load_sides
from tune.report.compare.render import markdown
from tune.report.frame import COLUMNS, label, time_span
from tune.report.memreport import memory_section
from tune.report.outputs import write_report

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
