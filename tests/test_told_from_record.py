"""A finished result is never thrown away (#24.8): a tuner killed after a trial's record was written but before
Optuna was told leaves a complete record (its status written last), and whoever resumes tells Optuna from it - the
resumed tuner on SQLite (dispatch.fail_orphans), another tuner finding the trial stale (liveness.fail_stale) -
instead of failing the trial and training it again."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import CORPUS, ROOT
from tune.core.budget import Budget
from tune.exec.record import record
from tune.report.frame import trials_frame
from tune.search import dispatch
from tune.search.settings import TuneSettings
from tune.search.study import run_study
from tune.store.liveness import fail_stale
from tune.store.spec import resolve_storage
from tune.store.storage import make_storage, open_study
from tune.store.told import VALUE_KEY, recorded_status

STEADY = "tests.tune_faults:steady"  # trains at once; its loss is set by the configuration
TINY_SPACE = {"batch_size": [2, 4], "block_size": [8, 16], "n_embed": [64, 64], "n_head": [1, 2],
              "n_layer": [1, 1], "learning_rate": [1e-3, 1e-2]}

# The tuner, killed (as by kill -9: no clean-up, no tell) at its first tell: after the trial's record was written.
KILLED_AT_THE_TELL = """
import os, sys
from pathlib import Path
from tests.test_told_from_record import STEADY, settings
from tune.search import study

def killed(self, trial, status, value=None):
    os._exit(137)

study.Tuner.tell = killed
study.run_study(settings(Path(sys.argv[1])), target=STEADY)
"""

optuna.logging.set_verbosity(optuna.logging.WARNING)


def settings(tmp_path, **kw) -> TuneSettings:
    """A tiny study of stand-in trials (tests.tune_faults.steady), one at a time, 60 steps each."""
    base = dict(trials=2, budget=Budget(60, "steps"), references=(), data=CORPUS, device="cpu",
                results=tmp_path / "results", study_name="r", space_overrides=TINY_SPACE, progress=False, seed=0,
                confirm=0, save_models=False)
    return TuneSettings.of(**{**base, **kw})


def _stored(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'results' / 'r' / 'study.db'}")


def test_a_tuner_killed_between_record_and_tell_resumes_with_the_result_counted_once(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_TELL, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    (orphan,) = _stored(tmp_path).trials
    assert orphan.state == TrialState.RUNNING and orphan.user_attrs["status"] == "ok"  # recorded, never told
    value = orphan.user_attrs[VALUE_KEY]
    assert value == orphan.user_attrs["val_loss"]

    out = run_study(settings(tmp_path), target=STEADY)
    assert out.ran == 1  # only the second trial trained: the first was told from its record, not run again
    first, second = out.study.trials  # and no retry of it was queued
    assert (first.state, first.value, second.state) == (TrialState.COMPLETE, value, TrialState.COMPLETE)
    df = trials_frame(out.study)
    assert list(df["status"]) == ["ok", "ok"] and df["retry_of"].isna().all()
    assert dispatch.tally(out.study)["counted"] == 2
    assert sorted(p.name for p in (out.results_dir / "logs").iterdir()) == [
        "trial_0000.curve.csv", "trial_0000.log", "trial_0001.curve.csv", "trial_0001.log"]  # each log, its curve


class _Writes:
    """A stand-in trial that notes the order of the record's writes."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def set_user_attr(self, key, value) -> None:
        self.keys.append(key)


def test_the_record_writes_its_status_last_after_the_objective_value():
    trial = _Writes()
    record(trial, {"status": "ok", "val_loss": 1.0, VALUE_KEY: 1.0, "steps": 60})
    assert trial.keys[-1] == "status" and VALUE_KEY in trial.keys and len(trial.keys) == 4


@pytest.mark.parametrize("attrs, expected", [
    ({"status": "ok", VALUE_KEY: 1.5}, "ok"),
    ({"status": "pruned", VALUE_KEY: None}, "pruned"),
    ({"status": "error", VALUE_KEY: None}, "error"),
    ({VALUE_KEY: 1.5, "val_loss": 1.5}, None),  # killed before its status was written
    ({"status": "ok"}, None),  # a record from a tuner that wrote its status first: maybe not complete
    ({"status": "ok", VALUE_KEY: None}, None),  # ok with nothing to tell
    ({"status": "running", VALUE_KEY: None}, None),
    ({"status": "junk", VALUE_KEY: 1.0}, None),
])
def test_only_a_complete_record_has_a_recorded_status(attrs, expected):
    assert recorded_status(attrs) == expected


def _three_orphans(study: optuna.Study) -> tuple[optuna.Trial, optuna.Trial, optuna.Trial]:
    """Three RUNNING trials whose tuner died: after an ok record, after a pruned record, before its status."""
    done, pruned, unfinished = study.ask(), study.ask(), study.ask()
    record(done, {"val_loss": 1.5, VALUE_KEY: 1.5, "status": "ok"})
    pruned.report(2.5, 10)
    record(pruned, {"val_loss": 2.5, VALUE_KEY: None, "status": "pruned"})
    unfinished.set_user_attr("val_loss", 3.5)
    return done, pruned, unfinished


def _check_told(study: optuna.Study, done, pruned, unfinished) -> None:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert (trials[done.number].state, trials[done.number].value) == (TrialState.COMPLETE, 1.5)
    assert trials[pruned.number].state == TrialState.PRUNED
    assert trials[unfinished.number].state == TrialState.FAIL
    queued = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in queued] == [unfinished.number]  # only it runs again


def test_a_resumed_sqlite_study_tells_orphans_with_a_complete_record_and_retries_the_rest(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    orphans = _three_orphans(study)
    assert dispatch.fail_orphans(study) == 1  # the unfinished one: failed and queued again
    _check_told(study, *orphans)
    assert study.trials[orphans[0].number].user_attrs["status"] == "ok"  # the record is kept as it was
    assert study.trials[orphans[2].number].user_attrs["status"] == "interrupted"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_stale_trial_with_a_complete_record_is_told_from_it_not_run_again(kind, tmp_path):
    url = f"journal:{tmp_path / 's.journal'}" if kind == "journal" else None
    spec = resolve_storage(url, tmp_path / "s.db")
    storage = make_storage(spec, 1, 2, lambda study, trial: dispatch.requeue(study, trial))
    study = open_study("s", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    orphans = _three_orphans(study)
    time.sleep(2.5)  # past the grace period: none of them was ever beaten for
    assert [t.number for t in fail_stale(study)] == [orphans[2].number]
    _check_told(study, *orphans)
    assert fail_stale(study) == []  # told once: nothing left to tell or fail
