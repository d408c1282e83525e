"""The report side of the learning-curve prediction: trials.csv's prediction columns, summary.md's account of how well
the line predicted, and a reference stopped at a rung by the prediction shown as judged there (predicted, not
measured) in summary.md and on the card, never as not run."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.test_card import DISTRIBUTIONS, _attrs, config, make_study, section, table_rows
from tune.core import schema, units
from tune.core.budget import format_seconds
from tune.core.space import Space
from tune.report.card.command import main as card_main
from tune.report.frame import originals, trials_frame
from tune.report.outputs import write_report
from tune.report.plots import loss_vs_memory_plot
from tune.report.predicted import INTERVAL_Z, verdict_at_rung
from tune.store.storage import reference_study_name

BUDGET = 12.0  # seconds
RUNGS = [1 / 9, 1 / 3, 1.0]
STEPS = (1, 3, 9)  # Optuna's report steps of the three rungs
SETTINGS = {"budget": "12 s", "budget_amount": BUDGET, "budget_unit": "s", "dtype": "float32", "objective": "loss",
            "memory_limit_bytes": None, "trials": 10, "sampler": "tpe", "pruner": "predict", "rungs": RUNGS,
            "reduction_factor": 3, "references": ["baby", "tiny"], "confirm_runs": 2}
PRED_COLUMNS = ("predicted_loss", "predicted_sd", "predicted_rung", "predicted_pairs", "incumbent_loss", "stopped_by")

# Searched trials: (losses at the rungs reached, stopped_by, prediction (loss, sd) or None). Trials 3 and 4 reached
# the target after a prediction at rung 2 (4 is outside its +-2 sd); 5 was stopped by halving, 6 by the prediction.
SEARCHED = [
    ([2.9, 2.6, 2.30], None, None),
    ([2.8, 2.5, 2.20], None, None),
    ([3.0, 2.7, 2.40], None, None),
    ([2.7, 2.4, 2.10], None, (2.12, 0.03)),
    ([2.85, 2.55, 2.35], None, (2.21, 0.02)),
    ([3.4], schema.HALVING, None),
    ([3.1, 2.9], schema.PREDICTION, (2.60, 0.05)),
]
PAIRS, INCUMBENT = 4, 2.10
# baby: stopped at rung 1 by the prediction, smaller than every run that trained; tiny: trained to the target.
BABY_LOSS, BABY_PRED, BABY_SD, BABY_PEAK = 2.41, 2.35, 0.04, 250
PEAK = 300  # every searched trial's peak MiB
TINY_LOSS = 2.25


def _prediction(loss_sd: tuple[float, float] | None, rung: int) -> dict:
    if loss_sd is None:
        return {}
    return {"predicted_loss": loss_sd[0], "predicted_sd": loss_sd[1], "predicted_rung": rung,
            "predicted_pairs": PAIRS, "incumbent_loss": INCUMBENT}


def predicted_study(folder: Path) -> optuna.Study:
    """A finished study with predictions, made directly (no training): the records the search leaves."""
    study = make_study(folder, trials=[], reference=False)
    study.set_user_attr("settings", SETTINGS)
    for k, (losses, stopped_by, pred) in enumerate(SEARCHED):
        done = len(losses) == len(RUNGS)
        attrs = {**_attrs("ok" if done else "pruned", {"val_loss": losses[-1], "tokens_per_s": 10_000.0 + k,
                                                       "peak": PEAK, "n_params": 100_000}),
                 "rung": len(losses), "rungs": len(RUNGS), "rung_loss": losses[-1], **_prediction(pred, 2)}
        if stopped_by:
            attrs["stopped_by"] = stopped_by
        study.add_trial(optuna.trial.create_trial(
            params=Space.encode(config(8, 32, 64 * (1 + k % 4), 2, 1 + k % 3)), distributions=DISTRIBUTIONS,
            state=TrialState.COMPLETE if done else TrialState.PRUNED, value=losses[-1] if done else None,
            user_attrs=attrs, intermediate_values=dict(zip(STEPS, losses))))
    refs = optuna.create_study(study_name=reference_study_name(folder.name), storage=f"sqlite:///{folder / 'study.db'}")
    refs.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, intermediate_values={1: BABY_LOSS},
        user_attrs={"reference": "baby", **_attrs("pruned", {"val_loss": BABY_LOSS, "tokens_per_s": 5_000.0,
                                                               "peak": BABY_PEAK, "n_params": 800_000}),
                    "rung": 1, "rungs": len(RUNGS), "rung_loss": BABY_LOSS, "stopped_by": schema.PREDICTION,
                    **_prediction((BABY_PRED, BABY_SD), 1)}))
    refs.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=TINY_LOSS, intermediate_values=dict(zip(STEPS, [2.8, 2.5, TINY_LOSS])),
        user_attrs={"reference": "tiny", **_attrs("ok", {"val_loss": TINY_LOSS, "tokens_per_s": 7_000.0,
                                                           "peak": 320, "n_params": 300_000}),
                    "rung": len(RUNGS), "rungs": len(RUNGS), "rung_loss": TINY_LOSS}))
    return study


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, str]:
    """The study's results folder after write_report, and its summary.md."""
    folder = tmp_path_factory.mktemp("pred") / "s1"
    write_report(predicted_study(folder), folder, plots=False)
    return folder, (folder / "summary.md").read_text()


def _answer() -> float:
    """The study's answer: the best loss at the target of a searched trial or a reference (nothing confirmed)."""
    return min([TINY_LOSS, *(losses[-1] for losses, _, _ in SEARCHED if len(losses) == len(RUNGS))])


def _part(text: str, heading: str) -> str:
    """One '## ' section of summary.md."""
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_trials_csv_carries_the_prediction_columns_and_its_glossary_names_each(written):
    folder, summary = written
    csv = pd.read_csv(folder / "trials.csv")
    assert all(c in csv.columns for c in PRED_COLUMNS)
    baby = csv[csv["reference"] == "baby"].iloc[0]
    assert (baby["predicted_loss"], baby["predicted_sd"], baby["incumbent_loss"]) == (BABY_PRED, BABY_SD, INCUMBENT)
    assert baby["stopped_by"] == schema.PREDICTION and baby["status"] == "pruned"
    stops = csv.loc[csv["reference"].isna(), "stopped_by"]
    assert list(stops.dropna()) == [s for _, s, _ in SEARCHED if s]
    # Whole numbers stay whole in the file, blank where a run carries no prediction.
    lines = (folder / "trials.csv").read_text().splitlines()
    header = lines[0].split(",")
    first = dict(zip(header, next(line for line in lines[1:] if ",baby," in line).split(",")))
    assert (first["predicted_rung"], first["predicted_pairs"]) == ("1", str(PAIRS))
    glossary = _part(summary, "trials.csv")
    for column in PRED_COLUMNS:
        assert len([line for line in glossary.splitlines() if line.startswith(f"| `{column}` |")]) == 1, column


def test_the_summary_measures_the_lines_error_and_counts_the_stops(written):
    _, summary = written
    part = _part(summary, "Learning-curve prediction")
    reached = [(k, losses[-1], pred) for k, (losses, _, pred) in enumerate(SEARCHED)
               if pred is not None and len(losses) == len(RUNGS)]
    errors = {k: loss - pred[0] for k, loss, pred in reached}
    within = sum(abs(errors[k]) <= INTERVAL_Z * pred[1] for k, _, pred in reached)
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert (f"{len(reached)} run(s) reached the target after a prediction: median absolute error "
            f"{units.LOSS.text(statistics.median(abs(e) for e in errors.values()))}, {within} of {len(reached)} "
            f"within ±{INTERVAL_Z} sd") in part
    assert f"the worst miss: trial {worst}, predicted {units.LOSS.text(SEARCHED[worst][2][0])}" in part
    assert units.LOSS.text(errors[worst], sign=True) in part
    by = [s for _, s, _ in SEARCHED]
    assert (f"searched trials stopped before the target: {by.count(schema.HALVING)} by successive halving, "
            f"{by.count(schema.PREDICTION)} by the prediction\n") in part + "\n"
    assert "reference(s) stopped by the prediction: `baby` (stopped at rung 1" in part


def test_a_reference_stopped_by_the_prediction_is_judged_at_its_rung_and_not_called_not_run(written):
    _, summary = written
    prose = summary.split("## trials.csv")[0]
    rung_1 = format_seconds(BUDGET * RUNGS[0])
    answer = _answer()
    assert (f"- reference `baby`: stopped at rung 1 of {len(RUNGS)} ({rung_1}) by the prediction, loss "
            f"{units.LOSS.text(BABY_LOSS)}; predicted {units.LOSS.text(BABY_PRED)} ± {units.LOSS.text(BABY_SD)} at "
            f"the target, the answer {units.LOSS.text(answer)}: predicted, not measured, to lose to the answer by "
            f"{units.LOSS.text(BABY_PRED - answer)}") in prose
    assert answer < TINY_LOSS  # the reference that trained to the target is compared as before: measured
    assert f"- beats reference `tiny` ({schema.label('val_loss')} {units.LOSS.text(TINY_LOSS)}) by " in prose
    assert "2 reference preset(s), 1 of them stopped at a rung by the prediction (baby)" in _part(prose, "What was run")
    so_far = next(line for line in prose.splitlines() if line.startswith("**The answer so far**"))
    assert "not run" not in so_far and "baby" not in so_far
    assert not re.search(r"\bnan\b|<NA>", prose, re.I)


def test_without_a_prediction_the_summary_has_no_prediction_section(tmp_path):
    study = make_study(tmp_path / "s1")
    write_report(study, tmp_path / "s1", plots=False)
    summary = (tmp_path / "s1" / "summary.md").read_text()
    assert "## Learning-curve prediction" not in summary and "stopped at a rung by the prediction" not in summary
    assert "| `predicted_loss` |" in summary  # the column is declared whether or not a run filled it


def test_the_card_shows_the_stopped_reference_as_judged_and_its_prediction(written, tmp_path):
    folder, _ = written
    out = tmp_path / "card.html"
    assert card_main([str(folder), "--results", str(folder.parent), "--no-matmul", "--out", str(out), "-q"]) == 0
    page = out.read_text()
    best = section(page, "best")
    assert "ref baby: stopped at rung 1 of 3" in best and "predicted, not measured" in best
    header = re.findall(r"<th>(.*?)</th>", section(page, "loss").split("<tbody>")[0])
    rows = {r[0]: dict(zip(header, r)) for r in table_rows(section(page, "loss"))}
    baby = rows["ref baby"]
    assert baby["status"] == f"pruned ({schema.PREDICTION})"
    assert baby["val loss"] == f"{units.LOSS.text(BABY_LOSS)} at rung 1/{len(RUNGS)}"
    assert baby["predicted at target"] == f"{units.LOSS.text(BABY_PRED)} ± {units.LOSS.text(BABY_SD)}"
    assert rows["ref tiny"]["val loss"] == units.LOSS.text(TINY_LOSS) and rows["ref tiny"]["predicted at target"] == "-"
    assert not re.search(r">\s*nan\s*<|<NA>", page.split('id="card-data"')[0], re.I)


@pytest.mark.parametrize("predicted, says", [(2.6, "to lose to the answer by"),
                                             (2.0, "to be no worse than the answer")])
def test_the_verdict_against_a_stopped_run_says_it_is_predicted(predicted, says):
    row = pd.Series({"status": "pruned", "reference": "baby", "rung": 2, "rungs": 3, "rung_loss": 2.5,
                     "stopped_by": schema.PREDICTION, "predicted_loss": predicted, "predicted_sd": 0.05,
                     "incumbent_loss": 1.9})
    text = verdict_at_rung(row, SETTINGS, 2.1, by_loss=True)
    assert text.startswith(f"stopped at rung 2 of 3 ({format_seconds(BUDGET * RUNGS[1])}) by the prediction")
    assert f"predicted, not measured, {says}" in text
    # Against a throughput answer, or with no answer yet, it is not compared.
    assert "not compared" in verdict_at_rung(row, SETTINGS, 1e4, by_loss=False)
    assert "not compared" in verdict_at_rung(row, SETTINGS, None, by_loss=True)


def test_the_loss_vs_memory_plot_draws_a_stopped_reference_at_its_rung_and_off_the_pareto_front(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    kept = {}
    runs = originals(trials_frame(predicted_study(tmp_path / "s1")))
    assert loss_vs_memory_plot(runs, None, lambda fig, name: kept.update({name: fig})) is None
    ax = kept["loss_vs_memory.png"].axes[0]
    [baby] = [c for c in ax.collections if c.get_label().startswith("reference baby")]
    assert "at the rung it stopped at" in baby.get_label()
    assert [tuple(xy) for xy in baby.get_offsets()] == [(BABY_PEAK, BABY_LOSS)]
    [front] = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    # Smaller than every run that trained, it would lead the front were its loss at the rung read as one at the
    # target.
    assert BABY_PEAK not in list(front.get_xdata()) and min(front.get_xdata()) == PEAK
