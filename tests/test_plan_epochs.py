"""The plan says how many epochs of the corpus a trial sees at the target, and warns before the first trial when it
is more than MANY_EPOCHS (tune.core.epochs, tune.search.session.epoch_estimate)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from gptcore.config import from_name
from tests.conftest import CORPUS
from tests.test_tune import TINY_SPACE
from tune.core.budget import Budget, RungPlan, parse_budget
from tune.core.epochs import MANY_EPOCHS, EpochEstimate
from tune.core.outcomes import Status
from tune.core.space import Space
from tune.exec.runner import TrialRun
from tune.exec.slots import Slot
from tune.search import session as plan
from tune.search.session import Session, epoch_estimate
from tune.search.settings import TuneSettings
from tune.search.study import run_study

TRAIN_TOKENS = 209_077  # any corpus size: the figures below are computed from it


def a_session(budget: Budget, tmp_path: Path | None = None) -> Session:
    """A session as the plan reads it (budget, space, corpus size, first slot, an empty study), nothing else."""
    study = optuna.create_study()
    results = tmp_path or Path("/nonexistent")
    return Session(TuneSettings.of(), study, None, Space(), {"device": "cpu"},
                   {"vocab_size": 80, "train_tokens": TRAIN_TOKENS}, Path("/data"), results, "float32", None, budget,
                   RungPlan.for_budget(budget), [Slot(0, (0,))], (), None)


class Runner:
    """A TrialRunner whose trial process "measures" a set throughput (a GPU's on a CPU-only machine)."""

    def __init__(self, tokens_per_s: float | None = None) -> None:
        self.tokens_per_s, self.jobs = tokens_per_s, []

    def run(self, job, on_eval, timeout, **kw):
        if self.tokens_per_s is None:
            raise AssertionError("the plan ran a throughput probe it should not have")
        self.jobs.append(job)
        return TrialRun(status=Status.OK, result={"tokens_per_s": self.tokens_per_s, "compile": "none"})


def test_a_step_budget_gives_the_exact_epochs_of_the_first_configuration_and_the_space(tmp_path):
    budget = Budget(3000, "steps")
    estimate = epoch_estimate(a_session(budget), Runner(), ["baby"], 0.0)
    model, train = from_name("baby")
    tokens = 3000 * train.batch_size * train.grad_accum_steps * model.block_size
    assert estimate.epochs == pytest.approx(tokens / TRAIN_TOKENS)
    space = Space()
    assert estimate.span == pytest.approx((3000 * space.batch_size[0] * space.block_size[0] / TRAIN_TOKENS,
                                           3000 * space.batch_size[1] * space.block_size[1] / TRAIN_TOKENS))
    assert "ref baby" in estimate.line() and "exact for a step budget" in estimate.line()


def test_a_time_budget_probes_the_first_configuration_in_a_trial_process_and_warns_naming_data_and_budget():
    runner = Runner(tokens_per_s=1_000_000.0)
    budget = parse_budget("10m")
    estimate = epoch_estimate(a_session(budget), runner, ["gpu"], 600.0 * 10)
    assert estimate.epochs == pytest.approx(1e6 * 600 / TRAIN_TOKENS)
    (job,) = runner.jobs  # the preset's configuration, trained for the probe's seconds only
    model, train = from_name("gpu")
    assert (job.model["n_layer"], job.train["batch_size"]) == (model.n_layer, train.batch_size)
    assert job.train["max_seconds"] == plan.PROBE_SECONDS and job.checkpoint is None
    warning = estimate.warning()
    assert warning.startswith("warning: at the target (10 min)") and f"{estimate.epochs:,.0f} times" in warning
    assert "--data" in warning and "--budget" in warning and "throughput probe" in warning
    # The shorter target it suggests does see the corpus at most about MANY_EPOCHS times.
    shorter = parse_budget(warning.split("--budget ")[1].split()[0])
    assert 0.9 * MANY_EPOCHS <= EpochEstimate.of_seconds(shorter, 1e6, TRAIN_TOKENS, "", "").epochs <= MANY_EPOCHS


def test_a_study_too_short_to_pay_for_a_probe_runs_none_and_says_so():
    estimate = epoch_estimate(a_session(Budget(2, "s")), Runner(), [], 2.0 * 4)
    assert isinstance(estimate, str) and "not estimated" in estimate


def test_a_resumed_study_estimates_from_its_own_runs_without_a_probe():
    session = a_session(parse_budget("10m"))
    for rate in (1000.0, 2000.0, 9000.0):
        session.study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"status": "ok",
                                                                                 "tokens_per_s": rate}))
    estimate = epoch_estimate(session, Runner(), [], 1e9)
    assert estimate.epochs == pytest.approx(2000.0 * 600 / TRAIN_TOKENS) and "measured" in estimate.how


def test_no_warning_at_or_below_the_threshold():
    at = EpochEstimate.of_seconds(Budget(60, "s"), MANY_EPOCHS * TRAIN_TOKENS / 60, TRAIN_TOKENS, "x", "y")
    assert at.epochs == pytest.approx(MANY_EPOCHS) and at.warning() is None
    assert EpochEstimate.of_steps(Budget(10, "steps"), 4, 16, TRAIN_TOKENS, "x").warning() is None


def settings(tmp_path, **kw) -> TuneSettings:
    base = dict(trials=1, references=(), data=CORPUS, device="cpu", results=tmp_path / "results", study_name="e",
                space_overrides=TINY_SPACE, progress=False, confirm=0, save_models=False)
    return TuneSettings.of(**{**base, **kw})


def test_the_warning_comes_before_the_first_trial_and_only_above_the_threshold(tmp_path, capsys):
    # The stand-in trains at once whatever the budget: 100000 steps of the space's middle, batch 4 x block 16, are
    # 30 epochs.
    run_study(settings(tmp_path, budget=Budget(100000, "steps")), target="tests.tune_faults:steady")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "epochs of the corpus per trial at the target" in text
    assert "more than 10" in text and text.index("warning: at the target") < text.index("trial   0")
    run_study(settings(tmp_path, budget=Budget(100, "steps"), study_name="f"), target="tests.tune_faults:steady")
    out = capsys.readouterr()
    assert "epochs of the corpus per trial at the target" in out.out and "warning: at the target" not in out.err
