"""Liveness of running trials, one interface for every storage: a tuner beats for each trial it runs, and any
tuner fails the trials whose beats stopped for longer than the grace period (their tuner died).

Clocks: an RDB storage (SQLite, PostgreSQL, MySQL) records and compares heartbeats with the database's own now(),
so the tuners' clocks never meet. A journal has no heartbeat in Optuna 5 (JournalStorage is no BaseHeartbeat): the
lease is the beating tuner's wall clock (time.time(), seconds since the epoch) stored on the trial and compared with
the checking tuner's wall clock - on a shared filesystem the machines' clocks must agree (NTP) to well within the
grace period.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tune.store import _optuna
from tune.store.storage import JournalLeaseStorage
from tune.store.told import tell_from_record

LEASE_KEY = "tune:lease"  # trial system attr: when the tuner running the trial last beat (journal storage)


def beat(storage: BaseStorage, trial_id: int, now: float | None = None) -> bool:
    """Record that this tuner still runs the trial; False if it is no longer RUNNING (another tuner failed it).

    Call it right after asking for the trial (a trial never beaten for is judged from its start) and then every
    heartbeat_interval seconds while its trial process runs. `now` is for tests only.
    """
    base = _optuna.base_storage(storage)
    if isinstance(base, JournalLeaseStorage):
        try:
            base.set_trial_system_attr(trial_id, LEASE_KEY, time.time() if now is None else now)
        except UpdateFinishedTrialError:
            return False
        return True
    if _optuna.heartbeat_enabled(base):
        _optuna.record_heartbeat(base, trial_id)
    return base.get_trial(trial_id).state == TrialState.RUNNING


GRACE_KEY = "tune:grace"  # trial system attr: the grace period of the tuner running it (see claim_grace)


def claim_grace(storage: BaseStorage, trial_id: int) -> None:
    """Record on a new trial the grace period its tuner promises to beat within, so every other tuner judges it
    by that and not by its own --grace-period (a tuner with a short grace must not fail a slow beater's trial)."""
    grace = _grace(_optuna.base_storage(storage))
    if grace is not None:
        storage.set_trial_system_attr(trial_id, GRACE_KEY, grace)


def _grace(base: BaseStorage) -> float | None:
    if isinstance(base, JournalLeaseStorage):
        return base.grace_period
    return _optuna.heartbeat_grace(base)


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose beats stopped for longer than their grace period; run on_stale once for each.

    A trial is judged by the longer of this tuner's grace period and the one its own tuner recorded on it
    (claim_grace). A trial never beaten for counts from its start: a tuner killed between asking for a trial and
    its first beat must not leave it RUNNING forever (Optuna alone never fails a trial that has not beaten).
    A stale trial whose record is complete (its tuner died after recording its end, before telling Optuna) is told
    from the record instead: not failed, not run again. Returns the trials this call failed.
    When two tuners call it at once, each stale trial is failed (and its callback run) by exactly one of them: one
    conditional UPDATE on a database, the log order on a journal. Call it inside study_lock all the same (which
    also keeps two tuners from telling one trial from its record at once).
    """
    storage = _optuna.storage_of(study)
    base = _optuna.base_storage(storage)
    own = _grace(base)
    if own is None:
        return []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    ids = [(_optuna.trial_id(t), t) for t in running]
    if isinstance(base, JournalLeaseStorage):
        # Clocks: the beating tuner's wall clock (the lease) against this tuner's.
        now, last = time.time(), {}
        for i, t in ids:
            lease = t.system_attrs.get(LEASE_KEY)
            last[i] = float(lease) if lease is not None else _start(t)
        claim = lambda i: storage.set_trial_state_values(i, state=TrialState.FAIL)  # noqa: E731
        on_stale = base.on_stale
    else:
        # Clocks: heartbeats are the database's now() on both sides; a start time is the asking tuner's clock.
        now_db, beats = _optuna.rdb_heartbeats(base)
        now = time.time()
        last = {i: now - (now_db - beats[i]).total_seconds() if i in beats else _start(t) for i, t in ids}
        claim = lambda i: _optuna.fail_if_running(base, i)  # noqa: E731
        on_stale = _optuna.stale_callback(base)
    stale = [i for i, t in ids
             if last[i] is not None
             and now - last[i] > max(own, float(t.system_attrs.get(GRACE_KEY) or 0))
             and not _told(study, t)]
    return _fail(study, stale, on_stale, claim)


def _told(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Tell a stale trial from its complete record; True if told here or finished meanwhile (nothing to fail)."""
    try:
        return tell_from_record(study, trial)
    except (UpdateFinishedTrialError, ValueError):
        # Optuna 5 refuses a finished trial with ValueError: its tuner (or another) told it first.
        base = _optuna.base_storage(_optuna.storage_of(study))
        if base.get_trial(_optuna.trial_id(trial)).state.is_finished():
            return True
        raise


def _start(trial: FrozenTrial) -> float | None:
    """A trial's start as seconds since the epoch (Optuna stores a naive local time, set by the asking tuner)."""
    return trial.datetime_start.timestamp() if trial.datetime_start is not None else None


def _fail(study: optuna.Study, trial_ids: list[int], on_stale: object,
          claim: Callable[[int], bool]) -> list[FrozenTrial]:
    """Fail each trial unless another tuner got there first (claim says); run on_stale for those this call failed."""
    import sqlalchemy.exc

    base = _optuna.base_storage(_optuna.storage_of(study))
    failed = []
    for trial_id in trial_ids:
        for attempt in range(3):
            try:
                if claim(trial_id):
                    failed.append(trial_id)
                break
            except UpdateFinishedTrialError:
                break  # another tuner failed it (or its own tuner finished it) first
            except (StorageInternalError, sqlalchemy.exc.OperationalError):
                # A write conflict (e.g. SQLite's lock between two writers): if the trial is finished now, someone
                # else did it; otherwise try again.
                if attempt == 2 or base.get_trial(trial_id).state.is_finished():
                    break
    trials = [copy.deepcopy(base.get_trial(trial_id)) for trial_id in failed]
    if callable(on_stale):
        for trial in trials:
            on_stale(study, trial)
    return trials
