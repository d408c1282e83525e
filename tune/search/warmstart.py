"""--warm-start SOURCE: the best configurations of an earlier study start this one.

People tuning on a new GPU (or a new corpus) usually have a study from an older one. Its best configurations
that this study's search space can draw are queued (Optuna's enqueue_trial) once, when the study starts: they are
its first trials, count toward --trials, and carry a `warm_start` label ("<SOURCE> trial N") into every table.
The source is read and checked before anything is created, so a bad one is one line and exit 2; the study
records it, so a resume enqueues nothing more and a resume from another source is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from gptcore.errors import UserError
from tune.core import schema
from tune.core.space import PARAMS, Space
from tune.report.frame import RANK_BY, trials_frame
from tune.search.settings import TuneSettings
from tune.store.load import check_one_objective
from tune.store.spec import StorageSpec, resolve_storage
from tune.store.storage import make_storage, sqlite_tables, study_file_problem

WARM_START_TOP = 5  # the source's best distinct configurations a warm start considers
ATTR = "warm_start"  # the study's record of its warm start, and each warm-start trial's label
# A source's trials are ranked by the figure its own objective chose its winner by (tune.report.frame.RANK_BY).
# trials.csv itself does not say which: a results folder's best.json records it (provenance.objective).
EXPECTED = "expected a results folder or trials.csv of an earlier study, or the name of a study in --storage"


@dataclass(frozen=True)
class Candidate:
    """One of the source's best configurations."""

    label: str  # "<SOURCE> trial N" or "<SOURCE> ref PRESET": the warm_start label of the trial it becomes
    values: dict[str, Any]  # the six parameters
    figure: float  # what the source's objective ranked it by (val loss or tokens/s)
    outside: str = ""  # the values this search space cannot draw (e.g. "n_embed 32"), for a skipped one


@dataclass(frozen=True)
class WarmStart:
    """A checked source, and which of its best configurations this study takes."""

    given: str  # SOURCE as typed: every label starts with it
    key: str  # the source itself (a resolved trials.csv, or a study and its storage): what a resume compares
    objective: str  # the source's objective, which ranked its trials
    how: str  # where that objective was read, for the console
    chosen: tuple[Candidate, ...]  # in this search space, best first, at most --trials: enqueued
    outside: tuple[Candidate, ...]  # among the source's best, but outside this search space: skipped
    over: tuple[Candidate, ...]  # in the space, but beyond --trials: not enqueued


def prepare(settings: TuneSettings, space: Space, spec: StorageSpec, study_name: str,
            results_dir: Path) -> WarmStart | None:
    """Read and check --warm-start against this study's space, before anything is created (None: no flag)."""
    text = settings.search.warm_start
    if text is None:
        return None
    if not text.strip():
        raise UserError(f"--warm-start: got an empty SOURCE; {EXPECTED}")
    try:
        frame, objective, how, key = read_source(text, settings, spec, study_name, results_dir)
    except UserError:
        # A study resumed with the flag it started with has enqueued its warm starts already: its source may have
        # moved or changed since, and the resume must not depend on it.
        if (recorded(spec, study_name) or {}).get("given") == text:
            print(f"warm start: study {study_name!r} was warm-started from {text} when it began (that source is no "
                  f"longer readable); nothing more to enqueue")
            return None
        raise
    column = RANK_BY[objective][0]
    missing = [c for c in ("status", *PARAMS, column) if c not in frame.columns]
    if missing:
        raise UserError(f"--warm-start {text}: its table lacks the column(s) {', '.join(missing)}; expected a "
                        f"trials.csv written by python -m tune")
    best = best_configs(frame, objective, text, space=space)
    if not best:
        raise UserError(f"--warm-start {text}: none of its {len(frame)} trial(s) trained to the target (status ok) "
                        f"with a {column}; expected a study with finished trials")
    inside = [c for c in best if space.contains(c.values)]
    outside = tuple(replace(c, outside=_outside(space, c)) for c in best if not space.contains(c.values))
    if not inside:
        raise UserError(f"--warm-start {text}: none of its {len(best)} best configuration(s) fits this search "
                        f"space (e.g. {outside[0].label}: {outside[0].outside}); widen the ranges or "
                        f"warm-start from another study")
    return WarmStart(text, key, objective, how, tuple(inside[:settings.search.trials]), outside,
                     tuple(inside[settings.search.trials:]))


def recorded(spec: StorageSpec, study_name: str) -> dict[str, Any] | None:
    """The warm start an existing study recorded, read without creating anything (None: no such study or file).

    Only file storages are looked into (their file must exist): opening an empty server database would create
    Optuna's tables in it.
    """
    if spec.kind not in ("sqlite", "journal") or spec.path is None or not spec.path.is_file():
        return None
    if spec.kind == "sqlite" and "studies" not in sqlite_tables(spec.path):
        return None
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(spec))
    except Exception:  # no such study, or a file that is not a storage: there is nothing recorded to go by
        return None
    return study.user_attrs.get(ATTR)


def read_source(text: str, settings: TuneSettings, spec: StorageSpec, study_name: str,
                results_dir: Path) -> tuple[pd.DataFrame, str, str, str]:
    """The source's trial table, its objective, where that was read, and the source's identity.

    An existing path is a results folder (its trials.csv) or a trials.csv; anything else names a study: in
    --storage when one is given, else in its own default storage, results/NAME/study.db.
    """
    path = Path(text).expanduser()
    if not path.exists():
        return read_study(text, settings, spec, study_name)
    csv = path / "trials.csv" if path.is_dir() else path
    if not csv.is_file():
        what = "no trials.csv in this folder" if path.is_dir() else "not a folder nor a file"
        raise UserError(f"--warm-start {text}: {what}; {EXPECTED}")
    csv = csv.resolve()
    if csv == (results_dir / "trials.csv").resolve():
        raise UserError(f"--warm-start {text}: these are this study's own results; name an earlier study")
    try:
        # Learning rates read back exactly as written (a range may end at one): pandas 3 parses floats that way,
        # pandas 2 only when asked (pandas 3 deprecates the option).
        exact = {"float_precision": "round_trip"} if pd.__version__.startswith("2.") else {}
        frame = schema.from_csv(pd.read_csv(csv, **exact))  # back in the record's names and units
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"--warm-start {text}: not a readable CSV ({str(exc).splitlines()[0][:200]}); "
                        f"{EXPECTED}") from None
    objective, how = csv_objective(csv)
    return frame, objective, how, str(csv)


def csv_objective(csv: Path) -> tuple[str, str]:
    """The objective of the study a trials.csv comes from, as the best.json beside it records it (else loss)."""
    try:
        best = json.loads((csv.parent / "best.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # none, unreadable, or not JSON: nothing states it
        best = None
    origin = best.get("provenance") if isinstance(best, dict) else None
    objective = origin.get("objective") if isinstance(origin, dict) else None
    if objective in RANK_BY:
        return objective, "its objective, from the best.json beside it"
    return "loss", "no best.json beside it states its objective"


def read_study(text: str, settings: TuneSettings, spec: StorageSpec,
               study_name: str) -> tuple[pd.DataFrame, str, str, str]:
    """A study's trial table (tune.report.frame.trials_frame) and objective, read from its storage."""
    if text == study_name:
        raise UserError(f"--warm-start {text}: that is this study; name an earlier one")
    if settings.store.storage is None:  # each study has a SQLite file of its own by default, in its results folder
        spec = resolve_storage(None, settings.store.results / text / "study.db")
    # A missing, empty or foreign file holds no study: never create a storage only to look into it.
    storage = None if study_file_problem(spec) else make_storage(spec)
    if storage is None or text not in optuna.get_all_study_names(storage):
        raise UserError(f"--warm-start {text}: no such folder or file, nor a study in {spec.display}; {EXPECTED}")
    # Another tool's study may warm-start this one (its parameters are matched by name below), if it has one objective.
    study = check_one_objective(optuna.load_study(study_name=text, storage=storage), f"--warm-start {text}")
    objective = study.user_attrs.get("settings", {}).get("objective")
    if objective not in RANK_BY:  # not a study of this tool's: its direction says which way is better
        objective = "throughput" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "loss"
    return trials_frame(study), objective, "its objective", f"study {text} in {spec.display}"


def best_configs(frame: pd.DataFrame, objective: str, given: str, top: int = WARM_START_TOP,
                 space: Space | None = None) -> list[Candidate]:
    """The `top` best distinct configurations that trained to the target (status ok, references too), best first;
    with `space`, each with the values of the fields it searches beside the six."""
    column, lower = RANK_BY[objective]
    ok = frame[frame["status"] == "ok"]
    if "confirm_of" in ok.columns:  # a confirmation run repeats a configuration with another seed: not a candidate
        ok = ok[ok["confirm_of"].isna() | (ok["confirm_of"] == "")]
    ok = ok.assign(_figure=lambda d: pd.to_numeric(d[column], errors="coerce"))
    ok = ok.dropna(subset=["_figure"]).sort_values("_figure", ascending=lower, kind="stable")
    seen: set[tuple[Any, ...]] = set()
    out: list[Candidate] = []
    for index, row in ok.iterrows():
        values = _values(row, space)
        key = tuple(values.values()) if values else None
        if key is None or key in seen:  # a retry, or a reference that equals a searched trial: one is enough
            continue
        seen.add(key)
        out.append(Candidate(f"{given} {_name(row, index)}", values, float(row["_figure"])))
        if len(out) == top:
            break
    return out


def _values(row: pd.Series, space: Space | None = None) -> dict[str, Any] | None:
    """The six parameters of a row as plain numbers (integers where whole), None if one is missing; then the
    fields `space` searches beside them (_extra_values)."""
    out: dict[str, Any] = {}
    for name in PARAMS:
        try:
            value = float(row[name])
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        # A whole number stays a float only if it is not whole: Space.contains refuses it for an integer.
        out[name] = value if name == "learning_rate" or not value.is_integer() else int(value)
    extra = _extra_values(row, space) if space is not None and space.extra else {}
    return None if extra is None else {**out, **extra}


def _extra_values(row: pd.Series, space: Space) -> dict[str, Any] | None:
    """The values a row trained for the fields `space` searches beside the six: its column when the source
    searched the field too, else its recorded config (a source that did not search it trained the tuner's own
    value); None when neither says."""
    config = row.get("config")
    if isinstance(config, str):  # trials.csv holds it as JSON
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    out: dict[str, Any] = {}
    for p in space.extra:
        value = p.coerce(row.get(p.name))
        if value is None and isinstance(config, dict):
            value = p.value_in(config.get("model") or {}, config.get("train") or {})
        if value is None:
            return None
        out[p.name] = value
    return out


def _name(row: pd.Series, index: Any) -> str:
    """'trial 12', 'ref baby', or the row for a table without trial numbers."""
    ref = row.get("reference")
    if isinstance(ref, str) and ref:
        return f"ref {ref}"
    try:
        return f"trial {int(row.get('number'))}"
    except (TypeError, ValueError):  # no trial number (NaN, or no such column)
        return f"row {index}"


def _outside(space: Space, c: Candidate) -> str:
    """Which of a configuration's values the space cannot draw, e.g. 'n_embed 32'."""
    return ", ".join(f"{name} {schema.param_text(c.values[name])}" for name in space.names
                     if not space.allows(name, c.values.get(name)))


def _config(values: dict[str, Any]) -> str:
    extra = "".join(f" {k} {schema.param_text(v)}" for k, v in values.items() if k not in PARAMS)
    return (f"batch {values['batch_size']} block {values['block_size']} embed {values['n_embed']} heads "
            f"{values['n_head']} layers {values['n_layer']} lr {values['learning_rate']:.2e}{extra}")


def enqueue(study: optuna.Study, warm: WarmStart | None, lock: Any, say: Callable[[str], None] = print) -> None:
    """Under the study lock, once per study: record the source, then queue its chosen configurations first.

    A resume from the same source enqueues nothing more; from another source, or of a study that already ran
    trials without a warm start, it is refused (the warm-start trials are a study's first).
    """
    if warm is None:
        return
    with lock:
        done = study.user_attrs.get(ATTR)
        if done is not None:
            if done.get("source") != warm.key:
                raise UserError(f"--warm-start {warm.given}: study {study.study_name!r} was warm-started from "
                                f"{done.get('given')}; resume it with that --warm-start or none, or use another "
                                f"--study-name")
            say(f"warm start: done when the study started, from {done.get('given')} "
                f"({len(done.get('enqueued', []))} configuration(s)); nothing more to enqueue")
            return
        held = len(study.get_trials(deepcopy=False))
        if held:
            raise UserError(f"--warm-start {warm.given}: study {study.study_name!r} already holds {held} trial(s) "
                            f"started without a warm start; warm-start a new study (another --study-name)")
        # Recorded first: a tuner killed between the two leaves a study that resumes, with fewer warm starts.
        study.set_user_attr(ATTR, {"source": warm.key, "given": warm.given, "objective": warm.objective,
                                   "enqueued": [c.label for c in warm.chosen],
                                   "outside": [c.label for c in warm.outside],
                                   "over_trials": [c.label for c in warm.over]})
        for c in warm.chosen:
            study.enqueue_trial(Space.encode(c.values), user_attrs={ATTR: c.label})
    say(describe(warm))


def describe(warm: WarmStart) -> str:
    """What a warm start enqueued and skipped, for the console."""
    column = RANK_BY[warm.objective][0]
    considered = len(warm.chosen) + len(warm.outside) + len(warm.over)
    lines = [f"warm start from {warm.given}: its {considered} best configuration(s) that trained to the target, "
             f"ranked by {column} ({warm.how}); {len(warm.chosen)} enqueued as this study's first trials"]
    lines += [f"    {c.label}: {_config(c.values)} ({column} {c.figure:.4g})" for c in warm.chosen]
    if warm.outside:
        lines.append(f"    skipped {len(warm.outside)} outside this search space: "
                     + "; ".join(f"{c.label} ({c.outside})" for c in warm.outside))
    if warm.over:
        lines.append(f"    not enqueued, beyond --trials: {', '.join(c.label for c in warm.over)}")
    return "\n".join(lines)
