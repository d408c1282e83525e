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
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from tune.storage import JournalLeaseStorage

# The tuner asks and tells trials itself (Study.optimize cannot run trial processes on several devices) and beats
# for them through this module: Optuna's warning on every ask about that is noise in the tuner's console.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

LEASE_KEY = "tune:lease"  # trial system attr: when the tuner running the trial last beat (journal storage)


def base_storage(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's cache (create_study wraps an RDBStorage in a _CachedStorage)."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def beat(storage: BaseStorage, trial_id: int, now: float | None = None) -> bool:
    """Record that this tuner still runs the trial; False if it is no longer RUNNING (another tuner failed it).

    Call it right after asking for the trial (Optuna never fails a trial that has no heartbeat yet) and then every
    heartbeat_interval seconds while its trial process runs. `now` is for tests only.
    """
    base = base_storage(storage)
    if isinstance(base, JournalLeaseStorage):
        import time

        try:
            base.set_trial_system_attr(trial_id, LEASE_KEY, time.time() if now is None else now)
        except UpdateFinishedTrialError:
            return False
        return True
    if isinstance(base, BaseHeartbeat) and is_heartbeat_enabled(base):
        base.record_heartbeat(trial_id)
    return base.get_trial(trial_id).state == TrialState.RUNNING


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose beats stopped for longer than the grace period; run on_stale once for each.

    Returns the trials this call failed. When two tuners call it at once, each stale trial is failed (and its
    callback run) by exactly one of them: the storage refuses the second FAIL (a row lock on a server, the
    journal's log order) and this function then skips it. Call it inside study_lock all the same.
    """
    base = base_storage(study._storage)
    if isinstance(base, JournalLeaseStorage):
        return _fail_stale_journal(study, base)
    if isinstance(base, BaseHeartbeat) and is_heartbeat_enabled(base):
        # optuna.storages.fail_stale_trials does this too, but returns nothing and stops at the first storage
        # error, leaving a failed trial without its callback (never retried): the same steps, per trial.
        ids = base._get_stale_trial_ids(study._study_id)  # what fail_stale_trials asks for; no public call
        ids += _never_beaten(study, base)
        return _fail(study, ids, base.get_heartbeat_stale_trial_callback(), lambda i: _claim_rdb(base, i))
    return []


def _never_beaten(study: optuna.Study, base: BaseStorage) -> list[int]:
    """RUNNING trials with no heartbeat at all, started longer than the grace period ago.

    Optuna never fails those (a trial is stale only once it has beaten), so a tuner killed between asking for a
    trial and its first beat would leave it RUNNING forever and every other tuner waiting for it. The start time is
    the asking tuner's local clock (Optuna sets it client-side), compared with this tuner's: machines sharing a
    study need their clocks (and time zones) to agree to well within the grace period.
    """
    from datetime import datetime

    import sqlalchemy
    from optuna.storages._rdb import models

    grace = base.grace_period or 2 * base.heartbeat_interval
    table = models.TrialHeartbeatModel.__table__
    with base.engine.connect() as conn:
        beaten = {row[0] for row in conn.execute(sqlalchemy.select(table.c.trial_id))}
    now = datetime.now()
    return [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t._trial_id not in beaten and t.datetime_start is not None
            and (now - t.datetime_start).total_seconds() > grace]


def _fail_stale_journal(study: optuna.Study, base: JournalLeaseStorage) -> list[FrozenTrial]:
    """fail_stale for a journal: leases (or the start time of a trial never beaten for) older than the grace."""
    import time

    if base.grace_period is None:
        return []
    now = time.time()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lease = trial.system_attrs.get(LEASE_KEY)
        if lease is None and trial.datetime_start is not None:
            lease = trial.datetime_start.timestamp()  # a naive local time, as the journal replays it
        if lease is not None and now - float(lease) > base.grace_period:
            stale.append(trial._trial_id)
    # The journal decides between two tuners by log order: the second FAIL of a trial is refused when it is
    # replayed (UpdateFinishedTrialError for the tuner that wrote it).
    return _fail(study, stale, base.on_stale,
                 lambda i: study._storage.set_trial_state_values(i, state=TrialState.FAIL))


def _claim_rdb(base: BaseStorage, trial_id: int) -> bool:
    """Set a RUNNING trial FAIL in one conditional UPDATE; True only for the one caller whose UPDATE changed it.

    Optuna's set_trial_state_values reads, checks and writes: on SQLite (no SELECT ... FOR UPDATE) two tuners
    both read RUNNING and both "fail" the trial, and both would retry it. WHERE state = RUNNING is atomic on
    every database. Columns as in optuna.storages._rdb.models (naive UTC datetimes).
    """
    from datetime import datetime, timezone

    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    update = (sqlalchemy.update(table)
              .where(table.c.trial_id == trial_id, table.c.state == TrialState.RUNNING)
              .values(state=TrialState.FAIL, datetime_complete=datetime.now(timezone.utc).replace(tzinfo=None)))
    with base.engine.begin() as conn:
        return conn.execute(update).rowcount == 1


def _fail(study: optuna.Study, trial_ids: list[int], on_stale: object,
          claim: Callable[[int], bool]) -> list[FrozenTrial]:
    """Fail each trial unless another tuner got there first (claim says); run on_stale for those this call failed."""
    import sqlalchemy.exc

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
                if attempt == 2 or base_storage(study._storage).get_trial(trial_id).state.is_finished():
                    break
    trials = [copy.deepcopy(base_storage(study._storage).get_trial(trial_id)) for trial_id in failed]
    if callable(on_stale):
        for trial in trials:
            on_stale(study, trial)
    return trials
