"""Open a finished (or running) study for reading: by its results folder, or by its name and storage.

`tune report`, `tune card` and `tune compare` all name studies this way, and none of them may create a storage
(Optuna creates its tables in whatever file it opens, so a typo would otherwise leave an empty study.db behind).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from gptcore.errors import UserError
from tune.store.names import check_study_name
from tune.store.spec import resolve_storage
from tune.store.storage import make_storage, study_file_problem

DEFAULT_RESULTS = Path("results")


@dataclass(frozen=True)
class Loaded:
    """A study read from its storage, and the results folder its tables and plots belong in."""

    study: optuna.Study
    folder: Path


# A study the tuner made has at least one of these (the fingerprint first, then the rest as it starts).
OUR_STUDY_ATTRS = ("fingerprint", "settings", "environment")


def check_one_objective(study: optuna.Study, where: str) -> optuna.Study:
    """The study, if it has one objective (the tuner's tables rank by one); a one-line UserError otherwise."""
    if len(study.directions) != 1:
        raise UserError(f"study {study.study_name!r} in {where}: has {len(study.directions)} objectives; expected a "
                        f"study made by python -m tune (one objective)")
    return study


def _ours(study: optuna.Study, where: str) -> optuna.Study:
    """The study, if the tuner could have made it: one objective and at least one of the tuner's attributes."""
    check_one_objective(study, where)
    if not any(key in study.user_attrs for key in OUR_STUDY_ATTRS):
        raise UserError(f"study {study.study_name!r} in {where}: has none of the tuner's attributes "
                        f"({', '.join(OUR_STUDY_ATTRS)}); expected a study made by python -m tune")
    return study


def _main_study_name(names: list[str], hint: str) -> str | None:
    # A storage holds the study and its companions ("NAME:references", "NAME:confirm"): the one without a colon.
    main = [n for n in names if ":" not in n]
    if hint in main:
        return hint
    return main[0] if len(main) == 1 else None


def load_study(study_name: str | None = None, *, storage: str | None = None,
               results: Path = DEFAULT_RESULTS) -> Loaded:
    """The study `study_name` in `storage` (default: results/NAME/study.db); without a name, the only study
    under `results`. Raises UserError (one line) when there is no such study; never creates one."""
    name = check_study_name(study_name) if study_name is not None else None
    if name is None:
        found = sorted(p.parent.name for p in results.glob("*/study.db"))
        if len(found) != 1:
            raise UserError(f"--study-name is needed: {len(found)} studies under {results} "
                            f"({', '.join(found) or 'none'})")
        name = found[0]
    folder = results / name
    spec = resolve_storage(storage, folder / "study.db")
    where = f"--storage {spec.display}" if storage else str(folder / "study.db")
    problem = study_file_problem(spec)  # reading only: never a new, empty storage
    if problem:
        raise UserError(f"{where}: {problem}")
    opened = make_storage(spec)
    try:
        study = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        raise UserError(f"--study-name {name}: no such study in {spec.display}") from None
    return Loaded(_ours(study, spec.display), folder)


def load_named(arg: str, *, storage: str | None = None, results: Path = DEFAULT_RESULTS) -> Loaded:
    """A study named on a command line: a results folder (holding study.db), or a study name (in --storage, else
    in results/NAME/study.db). UserError naming `arg` when it is neither."""
    path = Path(arg)
    db = path / "study.db"
    if storage is None and db.is_file():
        problem = study_file_problem(resolve_storage(None, db))
        if problem:
            raise UserError(f"{db}: {problem}")
        opened = make_storage(resolve_storage(None, db))
        name = _main_study_name(optuna.get_all_study_names(storage=opened), path.name)
        if name is None:
            raise UserError(f"{db}: expected one study in it")
        return Loaded(_ours(optuna.load_study(study_name=name, storage=opened), str(db)), path)
    if path.is_dir() and storage is None:
        raise UserError(f"{arg}: no study.db in this folder (expected a study's results folder or a study name)")
    if "/" in arg and storage is None:
        raise UserError(f"{arg}: no such results folder (expected a study's results folder or a study name)")
    return load_study(arg, storage=storage, results=results)
