"""One status type (tune.core.outcomes.Status): each outcome's Optuna state, whether it counts, whether it
measured the step, and the parse that refuses anything else."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from tune.core.outcomes import COUNTED, MEASURED, OUT_OF_MEMORY, Status
from tune.report.frame import trials_frame
from tune.report.summary import run_section
from tune.search import dispatch
from tune.store import told

OUTCOMES = [s for s in Status if s not in (Status.RUNNING, Status.QUEUED)]  # what a trial can end with


@pytest.mark.parametrize("status", list(Status), ids=lambda s: s.value)
def test_every_status_maps_to_one_optuna_state_consistently_with_its_traits(status):
    state = told.state_of(status)
    assert isinstance(state, TrialState) and state.name == status.state
    assert status.counted == (state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert status.counted == (state in told.COUNTED_STATES)
    assert not status.measured or status.counted  # a run that measured the step says something about it
    assert not status.is_oom or (status.counted and not status.measured)  # an OOM never measured its peak


def test_only_a_trial_that_trained_to_the_target_completes_and_only_errors_and_interruptions_fail():
    assert [s for s in Status if told.state_of(s) == TrialState.COMPLETE] == [Status.OK]
    assert {s for s in Status if told.state_of(s) == TrialState.FAIL} == {Status.ERROR, Status.INTERRUPTED}
    assert not Status.RUNNING.counted and not Status.QUEUED.counted


def test_the_trait_tuples_are_the_statuses_with_that_trait_as_stored_strings():
    assert set(COUNTED) == {s.value for s in Status if s.counted}
    assert set(MEASURED) == {s.value for s in Status if s.measured}
    assert set(OUT_OF_MEMORY) == {"oom", "predicted_oom"}
    assert all(type(v) is str for v in (*COUNTED, *MEASURED, *OUT_OF_MEMORY))


@pytest.mark.parametrize("status", list(Status), ids=lambda s: s.value)
def test_a_status_reads_and_writes_as_its_stored_string(status):
    assert Status.parse(status.value) is status
    assert f"{status}" == str(status) == status.value == json.loads(json.dumps(status))
    assert f"{status:<14}|" == f"{status.value:<14}|"  # the console's aligned column


@pytest.mark.parametrize("junk", ["OK", "complete", "", "ok ", "fail"])
def test_parse_rejects_an_unknown_status_in_one_line_naming_it(junk):
    with pytest.raises(ValueError) as info:
        Status.parse(junk)
    message = str(info.value)
    assert repr(junk) in message and "\n" not in message
    assert all(s.value in message for s in Status)  # and says what it expected


def _study_with_one_trial_per_outcome() -> optuna.Study:
    """A study holding one finished trial per outcome, each recorded and told as the tuner does."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for status in OUTCOMES:
        trial = study.ask()
        trial.set_user_attr("status", status.value)
        if status == Status.OK:
            study.tell(trial, 1.0)
        else:
            study.tell(trial, state=told.state_of(status))
    return study


def test_the_counted_statuses_are_what_dispatch_and_the_summary_count():
    study = _study_with_one_trial_per_outcome()
    counted = sum(s.counted for s in OUTCOMES)
    assert dispatch.tally(study)["counted"] == counted
    lines = run_section(study, trials_frame(study), {"trials": len(OUTCOMES)}, {})
    line = next(x for x in lines if x.startswith("- trials:"))
    assert f"{len(OUTCOMES)} asked, {counted} counted (" in line
    kept, _, others = line.partition("; not counted: ")
    assert all(f"1 {s.value}" in (kept if s.counted else others) for s in OUTCOMES)
