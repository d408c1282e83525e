"""Opening a study: its storage (creating tables if new, with liveness settings), the study itself, its companion
studies, checks on SQLite files, and the fingerprint that keeps trials of other settings out."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from gptcore.errors import UserError
from tune.store import _optuna, journal
from tune.store.locks import server_init_lock
from tune.store.spec import StorageSpec, connect_kwargs, damaged_sqlite, mask, scrub, secrets_of, storage_error

FINGERPRINT_KEYS = ("device_name", "gpu_memory_bytes", "cuda", "cuda_driver", "torch", "corpus", "dtype",
                    "budget", "objective", "space", "schedule", "threads_per_trial", "memory_limit", "compile",
                    "model")
# A key an old fingerprint lacks is no change, except these: before --model every study trained gptcore's GPT.
MISSING_MEANS = {"model": ""}


# Tries and back-off for races between tuners that start at once on one database (table creation, study rows).
RACE_TRIES = 6


StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class JournalLeaseStorage(optuna.storages.JournalStorage):
    """Optuna's journal storage plus what liveness needs: Optuna 5 has no heartbeat for journals
    (tune.store.liveness)."""

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend, heartbeat_interval: int | None,
                 grace_period: int | None, on_stale: StaleCallback | None) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period if grace_period is not None or heartbeat_interval is None \
            else 2 * heartbeat_interval
        self.on_stale = on_stale


def _backoff(attempt: int) -> None:
    """Sleep a random, growing time so racing tuners stop colliding."""
    time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))


def _is_race(exc: BaseException) -> bool:
    """Whether exc is what two tuners creating the same tables or rows at once get (worth trying again)."""
    import sqlalchemy.exc

    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    return isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))


def make_storage(spec: StorageSpec, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 on_stale: StaleCallback | None = None) -> optuna.storages.BaseStorage:
    """Open the storage (creating its tables if new), with liveness settings; failures are one-line UserErrors."""
    if spec.kind == "journal":
        try:
            backend = journal.open_backend(spec.path, f"--storage {spec.display}")  # a torn last line moved aside
            return JournalLeaseStorage(backend, heartbeat_interval, grace_period, on_stale)
        except UserError:
            raise
        except OSError as exc:
            raise UserError(f"--storage {spec.display}: cannot open ({exc.strerror or exc})") from None
        except Exception as exc:  # a file that is not a journal, or one damaged before its last line
            raise UserError(f"--storage {spec.display}: not an Optuna journal, or damaged before its last line "
                            f"({type(exc).__name__})") from None
    if spec.kind == "sqlite" and spec.path is not None and spec.path.is_file() and spec.path.stat().st_size:
        damage = sqlite_damage(spec.path)
        if damage is not None:
            raise damaged_sqlite(spec.path, damage)
    for attempt in range(RACE_TRIES):
        try:
            with server_init_lock(spec), warnings.catch_warnings():
                # heartbeat_interval is "experimental" in Optuna 5: a warning per tuner start says nothing useful.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    spec.url, engine_kwargs=connect_kwargs(spec), heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, heartbeat_stale_trial_callback=on_stale)
        except UserError:
            raise
        except Exception as exc:
            # Tuners started at once on an empty database race in CREATE TABLE (pg_type_typname_nsp_index) and in
            # the version row; the init lock serialises ours, this covers other clients (optuna-dashboard, older).
            if _is_race(exc) and attempt + 1 < RACE_TRIES:
                _backoff(attempt)
                continue
            raise storage_error(spec, exc) from None
    raise AssertionError("unreachable")


def open_study(name: str, storage: str | optuna.storages.BaseStorage, direction: str,
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               display: str | None = None) -> optuna.Study:
    """Create or load the study (a URL or a make_storage object); a failure is a one-line, password-free error."""
    shown = display or (mask(storage) if isinstance(storage, str) else type(storage).__name__)
    spec = StorageSpec("rdb", storage if isinstance(storage, str) else "", shown,
                       secrets=secrets_of(storage) if isinstance(storage, str) else ())
    for attempt in range(RACE_TRIES):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                       pruner=pruner, load_if_exists=True)
        except ValueError as exc:
            if "direction" in str(exc):
                raise UserError(f"study {name!r} exists with another objective direction: {exc}") from None
            raise UserError(scrub(f"--storage {shown}: cannot open ({exc})", spec)) from None
        except Exception as exc:  # sqlalchemy, a missing DB driver, a bad URL: all mean "this storage won't do"
            if _is_race(exc) and attempt + 1 < RACE_TRIES:  # another tuner created the study at this moment
                _backoff(attempt)
                continue
            raise storage_error(spec, exc) from None
    raise AssertionError("unreachable")


def sqlite_tables(path: Path) -> set[str]:
    """Table names in a SQLite file, opened read-only (never created or changed); sqlite3.Error if not one."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def sqlite_damage(path: Path) -> str | None:
    """What SQLite's quick_check finds wrong in a database file (opened read-only), or None if it finds nothing.

    A damaged page otherwise surfaces later, deep in whatever read it first (a 100-line traceback in the middle of
    a report); checking every page when the file is opened costs milliseconds for a study's few megabytes.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check(2)") if not row[0].startswith("***")]
    except sqlite3.OperationalError:  # locked, unreadable: not damage; opening it says what is wrong
        return None
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed", "file is not a database"
        return str(exc)
    return None if found == ["ok"] else (found or ["damaged"])[0]


def check_sqlite_file(spec: StorageSpec, results_dir: Path) -> None:
    """Refuse a SQLite storage file that is not a database, a damaged one, or an empty one beside results it would
    overwrite."""
    path = spec.path if spec.kind == "sqlite" else None
    if path is None or not path.is_file():
        return
    if path.stat().st_size == 0:
        # SQLite leaves a 0-byte file when killed before its first write; fine for a new study, but never
        # beside the tables of one that existed: starting afresh would overwrite its trials.csv.
        if (results_dir / "trials.csv").exists():
            raise UserError(f"{path}: empty, but {results_dir / 'trials.csv'} holds an earlier study's results; "
                            f"restore the database or use another --study-name or --results")
        return
    try:
        sqlite_tables(path)
    except sqlite3.Error:
        raise UserError(f"{path}: not a SQLite database (a damaged or foreign file); move it away or use "
                        f"another --study-name or --results") from None
    damage = sqlite_damage(path)  # now, before the tuner's hold on the file leaves a sidecar beside it
    if damage is not None:
        raise damaged_sqlite(path, damage)


def study_file_problem(spec: StorageSpec) -> str | None:
    """Why a SQLite or journal file holds no study to read (None: it may, or the storage is a server).

    Optuna creates its tables (or an empty journal) in whatever it opens: a report, which only reads, must never
    turn a missing, empty or foreign file into a new storage.
    """
    if spec.kind == "journal":
        return None if spec.path and spec.path.is_file() else "no such journal file"
    path = spec.path if spec.kind == "sqlite" else None
    if path is None:
        return None
    if not path.is_file():
        return "no such SQLite file"
    try:
        tables = sqlite_tables(path)
    except sqlite3.Error as exc:
        return f"not a readable SQLite database ({exc})"
    return None if "studies" in tables else "holds no Optuna study"


def check_fingerprint(study: optuna.Study, fp: dict[str, Any]) -> None:
    """Refuse to mix trials from another device, corpus, precision, budget or objective."""
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fp)
        # Two tuners starting at once both find none and both write; the storage keeps one (Optuna drops the
        # loser's insert silently): read back what was kept and compare as if it had been there before.
        old = _optuna.storage_of(study).get_study_user_attrs(_optuna.study_id(study)).get("fingerprint", fp)
    # A key missing from an old fingerprint was not recorded by the version that started the study: not a change.
    was, now = {**MISSING_MEANS, **old}, {**MISSING_MEANS, **fp}
    diff = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in FINGERPRINT_KEYS if was.get(k, now.get(k)) != now.get(k)]
    if diff:
        raise UserError(f"study {study.study_name!r} was run with other settings ({'; '.join(diff)}); "
                        f"use another --study-name")


def reference_study_name(name: str) -> str:
    """The companion study that holds a study's reference trials (presets), kept apart from the sampler."""
    return f"{name}:references"


def confirm_study_name(name: str) -> str:
    """The companion study that holds a study's confirmation runs (its best configurations again, fresh seeds)."""
    return f"{name}:confirm"


def load_references(study: optuna.Study) -> optuna.Study | None:
    """The reference study beside `study` in its storage, or None if it has none."""
    return _load_companion(study, reference_study_name(study.study_name))


def load_confirms(study: optuna.Study) -> optuna.Study | None:
    """The confirmation study beside `study` in its storage, or None if it has none."""
    return _load_companion(study, confirm_study_name(study.study_name))


def _load_companion(study: optuna.Study, name: str) -> optuna.Study | None:
    storage = _optuna.storage_of(study)
    if name not in optuna.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)
