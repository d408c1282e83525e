"""Where a study lives: opening its storage safely, its fingerprint, and trials a killed tuner left behind."""

from __future__ import annotations

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


def check_sqlite_file(storage: str, results_dir: Path) -> None:
    """Refuse a SQLite storage file that is not a database, or an empty one beside results it would overwrite."""
    if not storage.startswith("sqlite:///"):
        return
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        # SQLite leaves a 0-byte file when killed before its first write; fine for a new study, but never
        # beside the tables of one that existed: starting afresh would overwrite its trials.csv.
        if (results_dir / "trials.csv").exists():
            raise UserError(f"{path}: empty, but {results_dir / 'trials.csv'} holds an earlier study's results; "
                            f"restore the database or use another --study-name or --results")
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise UserError(f"{path}: not a SQLite database (a damaged or foreign file); move it away or use "
                        f"another --study-name or --results")


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
