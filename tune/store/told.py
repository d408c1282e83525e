"""Telling Optuna how a trial ended: at once by the tuner that ran it, or from the trial's record after that tuner
died between writing the record and telling Optuna.

A trial's record (tune.exec.record) is written before Optuna is told, its status last: every figure, the objective
value and the memory constraint come first. A record with a status is therefore complete, and a resumed tuner (or
another one, finding the trial stale) tells Optuna from it instead of failing the trial and training it again.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tune.core.outcomes import Status

VALUE_KEY = "objective_value"  # the record's objective value: the figure told to Optuna (None unless ok)


def state_of(status: Status) -> TrialState:
    """The Optuna state a trial with this outcome is told as (tune.core.outcomes.Status names it)."""
    return TrialState[status.state]


# The states of counted trials (Optuna's COMPLETE and PRUNED): what --trials counts.
COUNTED_STATES = frozenset(state_of(s) for s in Status if s.counted)


def tell(study: optuna.Study, trial: optuna.Trial | int, status: Status, value: float | None) -> None:
    """Tell Optuna a trial's end: COMPLETE with its value (ok), else the state its status is told as."""
    if value is not None:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state_of(status))


def recorded_status(attrs: dict[str, Any]) -> Status | None:
    """The outcome a complete record holds; None for a record still being written (no status yet), one written
    by a tuner that did not write its status last (no objective value), or one whose status is not an outcome."""
    if VALUE_KEY not in attrs or "status" not in attrs:
        return None
    try:
        status = Status.parse(attrs["status"])
    except ValueError:
        return None
    if state_of(status) in (TrialState.RUNNING, TrialState.WAITING):
        return None
    if status == Status.OK and attrs[VALUE_KEY] is None:
        return None  # ok with no value to tell (a non-finite figure): judged as an interrupted trial
    return status


def tell_from_record(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Tell a RUNNING trial whose record holds a counted outcome as the record says (its tuner died before telling
    Optuna); False, telling nothing, when the record is incomplete or not counted (an error, an interruption)."""
    status = recorded_status(trial.user_attrs)
    if status is None or not status.counted:
        return False
    tell(study, trial.number, status, trial.user_attrs[VALUE_KEY] if status == Status.OK else None)
    return True
