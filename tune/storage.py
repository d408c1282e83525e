"""Where a study lives: opening its storage safely, its fingerprint, and trials a killed tuner left behind."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from gptcore.errors import UserError

FINGERPRINT_KEYS = ("device_name", "gpu_memory_bytes", "cuda", "cuda_driver", "torch", "corpus", "dtype",
                    "budget", "objective", "space", "schedule")


def open_study(name: str, storage: str, direction: str, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create or load the study; any failure to reach the storage is a one-line user error."""
    try:
        return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)
    except ValueError as exc:
        if "direction" in str(exc):
            raise UserError(f"study {name!r} exists with another objective direction: {exc}") from None
        raise UserError(f"--storage {storage}: cannot open ({exc})") from None
    except Exception as exc:  # sqlalchemy, a missing DB driver, a bad URL: all mean "this storage won't do"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--storage {storage}: cannot open ({type(exc).__name__}: {first[:200]})") from None


def sqlite_path(storage: str) -> Path | None:
    """The database file of an sqlite:/// URL; None for other URLs, an in-memory or a malformed one."""
    if not storage.startswith("sqlite:///"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(storage).database
    except Exception:  # a malformed URL: optuna's own error says so when it is opened
        return None
    return Path(database) if database and database != ":memory:" else None


def sqlite_tables(path: Path) -> set[str]:
    """Table names in a SQLite file, opened read-only (never created or changed); sqlite3.Error if not one."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_sqlite_file(storage: str, results_dir: Path) -> None:
    """Refuse a SQLite storage file that is not a database, or an empty one beside results it would overwrite."""
    path = sqlite_path(storage)
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


def study_file_problem(storage: str) -> str | None:
    """Why an sqlite:/// URL holds no study to read (None: it may, or it is another kind of URL).

    Optuna creates its tables in whatever database it opens: a report, which only reads, must never turn a
    missing, empty or foreign file into a new database.
    """
    path = sqlite_path(storage)
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
        return
    # A key missing from an old fingerprint was not recorded by the version that started the study: not a change.
    diff = [f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in FINGERPRINT_KEYS if old.get(k, fp.get(k)) != fp.get(k)]
    if diff:
        raise UserError(f"study {study.study_name!r} was run with other settings ({'; '.join(diff)}); "
                        f"use another --study-name")


def close_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a run that was killed outright: record them, never lose them."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.Trial(study, frozen._trial_id)  # FrozenTrial exposes its storage id only this way
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("error", "the tuner process stopped during this trial")
        study.tell(trial, state=TrialState.FAIL)


def reference_study_name(name: str) -> str:
    """The companion study that holds a study's reference trials (presets), kept apart from the sampler."""
    return f"{name}:references"


def load_references(study: optuna.Study) -> optuna.Study | None:
    """The reference study beside `study` in its storage, or None if it has none."""
    storage = study._storage  # Study has no public accessor for its storage object
    name = reference_study_name(study.study_name)
    if name not in optuna.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)
