"""--pruner predict: a trial's loss at the target predicted from its loss at a rung (a line through the study's own
pairs), the pruner that stops a trial whose prediction cannot beat the incumbent, and a whole study in which the
references run after the search and one is stopped at a rung by the prediction."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from tests.test_confirm import settings
from tune.core.budget import Budget
from tune.core.schema import HALVING, MEDIAN, PREDICTION
from tune.report.frame import trials_frame
from tune.search import predict
from tune.search.predict import MIN_PAIRS, Prediction, PredictivePruner, fit_predict
from tune.search.study import run_study

CURVED = "tests.tune_faults:curved"


def test_a_line_through_exact_pairs_predicts_exactly_with_no_spread():
    pairs = [(x, 0.5 * x + 1) for x in (2.0, 2.5, 3.0, 3.5)]
    p = fit_predict(pairs, 2.2)
    assert p.mean == pytest.approx(2.1) and p.sd == pytest.approx(0, abs=1e-12) and p.pairs == 4


def test_no_line_from_too_few_pairs_equal_rung_losses_or_a_falling_line():
    assert fit_predict([(x, x) for x in range(MIN_PAIRS - 1)], 1.0) is None
    assert fit_predict([(2.0, y) for y in (1.0, 1.1, 1.2, 1.3)], 2.0) is None
    assert fit_predict([(x, -x) for x in (1.0, 2.0, 3.0, 4.0)], 2.0) is None


def test_the_prediction_is_less_sure_far_from_the_pairs_seen():
    pairs = [(2.0, 1.0), (2.5, 1.3), (3.0, 1.4), (3.5, 1.8), (4.0, 1.9)]
    near, far = fit_predict(pairs, 3.0), fit_predict(pairs, 1.0)
    assert 0 < near.sd < far.sd
    assert Prediction(2.0, 0.1, 5).bound(2.0) == pytest.approx(1.8)


def study_with(pairs: list[tuple[float, float]], step: int = 10) -> optuna.Study:
    """A study holding one trial per (loss at `step`, loss at the target) pair, each complete."""
    study = optuna.create_study()
    for x, y in pairs:
        study.add_trial(create_trial(params={"lr": 0.001}, distributions={"lr": FloatDistribution(1e-4, 1e-2)},
                                     value=y, intermediate_values={step: x}))
    return study


def running_at(study: optuna.Study, loss: float, step: int = 10) -> optuna.trial.FrozenTrial:
    """A running trial that reported `loss` at `step`."""
    trial = study.ask({"lr": FloatDistribution(1e-4, 1e-2)})
    trial.report(loss, step)
    return study._storage.get_trial(trial._trial_id)


class Halving(optuna.pruners.BasePruner):
    """A stand-in for successive halving that answers as told."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def prune(self, study, trial) -> bool:
        return self.answer


def test_the_study_pairs_each_trials_rung_loss_with_its_target_loss_and_the_best_is_the_incumbent():
    study = study_with([(3.0, 2.0), (2.0, 1.5), (4.0, 2.5), (2.5, 1.75)])
    assert sorted(predict.rung_pairs(study, 10)) == [(2.0, 1.5), (2.5, 1.75), (3.0, 2.0), (4.0, 2.5)]
    assert predict.rung_pairs(study, 20) == []  # nobody reported there
    assert predict.incumbent(study) == 1.5
    assert predict.predict(study, 10, 3.5).mean == pytest.approx(2.25)


def test_a_trial_that_cannot_beat_the_incumbent_is_stopped_by_the_prediction_and_one_that_can_trains_on():
    study = study_with([(3.0, 2.0), (2.0, 1.5), (4.0, 2.5), (2.5, 1.75)])  # target = rung / 2 + 0.5, exactly
    pruner = PredictivePruner(Halving(False))
    assert pruner.reason(study, running_at(study, 3.5)) == PREDICTION  # predicted 2.25 > 1.5
    assert pruner.reason(study, running_at(study, 1.8)) is None  # predicted 1.4: a new best
    assert PredictivePruner(Halving(True)).reason(study, running_at(study, 1.8)) == HALVING  # halving first
    assert predict.stop_reason(pruner, study, running_at(study, 3.5)) == PREDICTION
    with pytest.raises(ValueError, match="z must be >= 0, got -1"):
        PredictivePruner(Halving(False), z=-1)


def test_below_min_pairs_successive_halving_decides_alone():
    study = study_with([(3.0, 2.0), (2.0, 1.5), (4.0, 2.5)])
    assert PredictivePruner(Halving(False)).reason(study, running_at(study, 9.0)) is None


def test_other_pruners_name_their_own_rule():
    study = study_with([(3.0, 2.0), (2.0, 1.5), (4.0, 2.5), (2.5, 1.75), (2.2, 1.6)])
    median = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    assert predict.stop_reason(median, study, running_at(study, 9.0)) == MEDIAN
    assert predict.stop_reason(optuna.pruners.NopPruner(), study, running_at(study, 9.0)) is None


def test_the_bound_is_read_optimistically_by_z_standard_deviations():
    p = Prediction(1.6, 0.05, 6)
    assert predict.cannot_win(p, 1.45) and not predict.cannot_win(p, 1.55)  # 1.6 - 2 x 0.05 = 1.5
    assert not predict.cannot_win(None, 1.0) and not predict.cannot_win(p, None)
    attrs = predict.prediction_attrs(p, 2, 1.45)
    assert attrs == {"predicted_loss": 1.6, "predicted_sd": 0.05, "predicted_rung": 2, "predicted_pairs": 6,
                     "incumbent_loss": 1.45}


def test_references_run_after_the_search_and_one_predicted_to_lose_stops_at_a_rung_under_predict_only(tmp_path):
    """4 trials to the target (no pruner) give the line 4 pairs; the resumed study prunes with it. The stand-in's
    rung losses lie on one line with its target losses, so each prediction must equal the loss the run would reach.
    """
    kw = dict(rungs=3, budget=Budget(90, "steps"), confirm=0)
    run_study(settings(tmp_path, trials=4, pruner="none", **kw), target=CURVED)
    out = run_study(settings(tmp_path, trials=8, pruner="predict", references=("course-default",), **kw),
                    target=CURVED)
    df = trials_frame(out.study)
    ref = df[df["reference"] == "course-default"].iloc[0]
    searched = df[df["reference"].isna()]
    assert ref["started"] > searched["started"].max()  # the search first
    target = 1 + abs(math.log10(3e-4) + 2.5)  # what course-default (learning rate 3e-4) reaches at the target
    assert (ref["status"], ref["stopped_by"], int(ref["predicted_rung"])) == ("pruned", PREDICTION, 1)
    assert ref["predicted_loss"] == pytest.approx(target, abs=1e-5) and ref["predicted_pairs"] >= MIN_PAIRS
    assert ref["incumbent_loss"] == pytest.approx(searched["val_loss"][searched["status"] == "ok"].min())
    later = searched[searched["number"] >= 4]
    assert (later["status"] == "pruned").all() and set(later["stopped_by"]) <= {HALVING, PREDICTION}
    for _, row in later.iterrows():  # each stopped trial recorded what it would have reached, exactly
        lr = row["learning_rate"]
        assert row["predicted_loss"] == pytest.approx(1 + abs(math.log10(lr) + 2.5), abs=1e-5)
    summary = (out.results_dir / "summary.md").read_text()
    assert "reference `course-default`: stopped at rung 1 of 3" in summary and "## Learning-curve prediction" in summary
    # With successive halving alone a reference trains to the target, its prediction recorded all the same.
    out = run_study(settings(tmp_path, trials=8, pruner="asha", references=("course-default", "baby"), **kw),
                    target=CURVED)
    baby = trials_frame(out.study).query("reference == 'baby'").iloc[0]
    assert baby["status"] == "ok" and pd.isna(baby["stopped_by"])
    assert baby["predicted_loss"] == pytest.approx(baby["val_loss"], abs=1e-5)
    assert baby["val_loss"] > baby["incumbent_loss"]  # predicted to lose, and trained on
