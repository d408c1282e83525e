"""Every use of Optuna's private API, in one place (written for Optuna 5, tested with 5.1; pyproject bounds it below 6).

Optuna has no public way to reach a study's storage, a trial's id, the RDB storage under its cache, heartbeats
outside Study.optimize, or a conditional state change: the tuner needs each (it asks and tells trials itself, from
several processes). When Optuna changes one of these, this file is the one to fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import datetime

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

# Optuna warns on every ask outside Study.optimize when heartbeats are on; the tuner beats for its trials itself
# (tune.store.liveness), so the warning is noise. Silenced by quiet_optuna(), for the CLI only.
_ASK_WARNING = "Heartbeat of storage is supposed to be used with Study.optimize"


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage object a study reads and writes (Study has no public accessor)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id(trial: Trial | FrozenTrial) -> int:
    """A trial's id in its storage (unique across the storage's studies, unlike its number)."""
    return trial._trial_id


def base_storage(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's cache (create_study wraps an RDBStorage in a _CachedStorage)."""
    from optuna.storages._cached_storage import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether the storage (an RDBStorage made with heartbeat_interval) records Optuna's own heartbeats."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    base = base_storage(storage)
    return isinstance(base, BaseHeartbeat) and is_heartbeat_enabled(base)


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """Record a heartbeat for a running trial (the storage must have heartbeat_enabled)."""
    base_storage(storage).record_heartbeat(trial_id)


def heartbeat_grace(storage: BaseStorage) -> float | None:
    """The grace period of a heartbeat storage (Optuna's default: twice the interval); None without heartbeats."""
    if not heartbeat_enabled(storage):
        return None
    base = base_storage(storage)
    return base.grace_period or 2 * base.heartbeat_interval


def stale_callback(storage: BaseStorage) -> Callable[[optuna.Study, FrozenTrial], None] | None:
    """The heartbeat_stale_trial_callback the heartbeat storage was made with."""
    return base_storage(storage).get_heartbeat_stale_trial_callback()


def rdb_heartbeats(storage: BaseStorage) -> tuple[datetime, dict[int, datetime]]:
    """The database's now() and every trial's last heartbeat (both naive, both the database's clock)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    with base_storage(storage).engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar().replace(tzinfo=None)
        beats = {row[0]: row[1].replace(tzinfo=None)
                 for row in conn.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat))}
    return now, beats


def fail_if_running(storage: BaseStorage, trial_id: int) -> bool:
    """Set a RUNNING trial FAIL in one conditional UPDATE on Optuna's trial table; True only for the one caller
    whose UPDATE changed it.

    Optuna's set_trial_state_values reads, checks and writes: on SQLite (no SELECT ... FOR UPDATE) two tuners
    both read RUNNING and both "fail" the trial. WHERE state = RUNNING is atomic on every database. Columns as in
    optuna.storages._rdb.models (naive local datetimes, as Optuna writes them).
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    update = (sqlalchemy.update(table)
              .where(table.c.trial_id == trial_id, table.c.state == TrialState.RUNNING)
              .values(state=TrialState.FAIL, datetime_complete=datetime.now()))
    with base_storage(storage).engine.begin() as conn:
        return conn.execute(update).rowcount == 1


def quiet_optuna() -> None:
    """Optuna's INFO lines and its ask-outside-optimize warning off, for the tuner's console (the CLI calls it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=_ASK_WARNING)
