"""A study's results as data, from the storage alone: the trial table, the winner (confirmed or single-run),
best.json's config and provenance, the OOM frontier. tune.report.outputs writes them; tune.report.summary and
tune.report.plots show them."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from gptcore.config import ModelConfig, TrainConfig, from_name, to_dict
from gptcore.errors import UserError
from gptcore.files import atomic_dir, contained_file, inside
from gptcore.layout import CHECKPOINT_FILES, STATE
from tune.core import schema, units
from tune.core.budget import Budget, schedule_fields
from tune.core.confirm import CONFIRM_RUNS, confirm_label, confirm_rule, source_name
from tune.core.outcomes import COUNTED, Status
from tune.core.provenance import versions
from tune.core.space import PARAMS, Space, preset_params
from tune.store.storage import load_confirms, load_references

# trials_frame's columns: the record (tune.core.schema), the figures the tables are built from, and bookkeeping.
COLUMNS = [*(f.name for f in schema.FIELDS), "state", "measured_peak_bytes", "tuner_pid", "parent_rss_bytes"]
_KNOWN = frozenset(COLUMNS)

# What a confirmation run's row says it repeats when its tuner died before recording it.
UNRECORDED = "(unrecorded)"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, the references first, then the searched trials, then the confirmation runs (from the
    trials' user attributes), plus the loss at every rung."""
    refs, confirms = load_references(study), load_confirms(study)
    params = searched_extras(study)
    frames = [_frame(refs, "reference", params)] if refs is not None else []
    frames.append(_frame(study, "search", params))
    if confirms is not None:
        frames.append(_frame(confirms, "confirm", params))
    df = pd.concat([f for f in frames if not f.empty] or frames, ignore_index=True)
    corpus = study.user_attrs.get("corpus_tokens") or {}
    # Epochs: how often the trial saw the training split (unknown for studies that did not record its size).
    df["epochs"] = pd.to_numeric(df["tokens"], errors="coerce") / corpus["train"] if corpus.get("train") else None
    # The peak a memory limit counts (tune.exec.record.measured_peak); studies recorded before it: CUDA max allocated,
    # else the trial process's peak RSS.
    peaks = df[["measured_peak_bytes", "peak_allocated_bytes", "peak_rss_bytes"]].apply(pd.to_numeric, errors="coerce")
    df["peak_memory_bytes"] = peaks.bfill(axis=1).iloc[:, 0]
    _fill_from_source(df)
    df["trial"] = [label(r) for _, r in df.iterrows()]
    return df


def searched_extras(study: optuna.Study) -> list[str]:
    """The fields the study searched beside the six (its recorded space; none for a study of the six)."""
    space = study.user_attrs.get("settings", {}).get("space") or {}
    return [name for name in space if name not in PARAMS]


def extra_params(df: pd.DataFrame) -> list[str]:
    """The columns of a trials_frame that are fields searched beside the six: trials_frame keeps no column but the
    record's, its bookkeeping, those and the rungs' (a helper column a caller adds starts with '_')."""
    return [c for c in df.columns if c not in _KNOWN and not c.startswith(("loss_rung_", "_"))]


@dataclass(frozen=True)
class TimeSpan:
    """When a study's runs ran, in UTC: from the first start to the last end (or start, for a run still going)."""

    start: datetime  # UTC
    end: datetime  # UTC

    @property
    def seconds(self) -> float:
        """The span's wall time."""
        return (self.end - self.start).total_seconds()

    def text(self) -> str:
        """'2026-12-05 07:41 to 09:02 UTC' (the end's date too when it is another day)."""
        end = f"{self.end:%H:%M}" if self.end.date() == self.start.date() else f"{self.end:%Y-%m-%d %H:%M}"
        return f"{self.start:%Y-%m-%d %H:%M} to {end} UTC"


def utc(moment: datetime) -> datetime:
    """An Optuna time (naive, the machine's local time) or an aware one, in UTC."""
    return moment.astimezone(timezone.utc)


def time_span(study: optuna.Study) -> TimeSpan | None:
    """The study's time span over all its runs (searched trials, references, confirmation runs); None before any
    started. Every report's start, end and duration of a study come from here."""
    studies = [study, load_references(study), load_confirms(study)]
    times = [utc(t) for s in studies if s is not None for tr in s.get_trials(deepcopy=False)
             for t in (tr.datetime_start, tr.datetime_complete) if t is not None]
    return TimeSpan(min(times), max(times)) if times else None


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's status for every table: its recorded outcome; 'running' or 'queued' while it has none; and
    'interrupted' for a trial failed without a record (its tuner was killed: stale, failed by another tuner)."""
    if trial.state == TrialState.RUNNING:
        return Status.RUNNING.value
    if trial.state == TrialState.WAITING:
        return Status.QUEUED.value
    status = trial.user_attrs.get("status")
    if trial.state == TrialState.FAIL and status not in (Status.ERROR, Status.INTERRUPTED):
        return Status.INTERRUPTED.value  # failed as stale, perhaps while its tuner was still writing its record
    return status or trial.state.name.lower()


def _frame(study: optuna.Study, kind: str, params: list[str]) -> pd.DataFrame:
    """The rows of one study; `kind`: search, reference or confirm (numbers only mean something in the search);
    `params`: the fields searched beside the six, a column each."""
    search = kind == "search"
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    rows = []
    for t in trials:
        history = t.system_attrs.get("retry_history") or []
        # The parameters come from the trial itself (drawn before it ran): every row shows them, whatever the
        # trial's end, even when its tuner was killed before it recorded anything; a queued warm start, the
        # values it was enqueued with.
        drawn = t.params or t.system_attrs.get("fixed_params") or {}
        row = {"number": t.number if search else None, **Space.decode(drawn), **t.user_attrs,
               "state": t.state.name,
               "status": status_of(t), "retry_of": history[-1] if history and search else None,
               "objective_value": t.value if t.state == TrialState.COMPLETE else None,
               "started": utc(t.datetime_start) if t.datetime_start else None}
        if kind == "reference" and t.user_attrs.get("reference"):
            row.update({k: v for k, v in preset_params(t.user_attrs["reference"]).items() if pd.isna(row.get(k))})
        if kind == "confirm" and not t.user_attrs.get("confirm_of"):
            # A queued retry records what it repeats only once claimed: until then it is the run it retries.
            failed = by_number.get(history[-1]) if history else None
            attrs = failed.user_attrs if failed is not None else {}
            row.update({k: attrs.get(k) for k in ("confirm_of", "confirm_run", "confirm_seed")})
            row["confirm_of"] = row["confirm_of"] or UNRECORDED
        if t.state == TrialState.FAIL and not t.user_attrs.get("error"):
            row["error"] = "its tuner stopped beating (killed or cut off): failed as stale"
        for k, (_, value) in enumerate(sorted(t.intermediate_values.items()), start=1):
            row[f"loss_rung_{k}"] = value  # reports are at steps 1, eta, eta**2...: the k-th is rung k
        rows.append(row)
    df = pd.DataFrame(rows)
    extra = sorted((c for c in df.columns if c.startswith("loss_rung_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    df = df.reindex(columns=[*COLUMNS, *params, *extra])
    for col in ("retry_of", "confirm_run", "confirm_seed"):  # whole numbers, or empty
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def _fill_from_source(df: pd.DataFrame) -> None:
    """A confirmation run's row shows its configuration's searched values even when its tuner died before
    recording them: they are those of the run it repeats."""
    runs = df["confirm_of"].notna()
    if not runs.any():
        return
    tried = df[~runs]
    names = [*PARAMS, *extra_params(df)]
    lookup = tried[names].set_axis([source_of(r) for _, r in tried.iterrows()])
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    for p in names:
        df.loc[runs, p] = df.loc[runs, p].fillna(df.loc[runs, "confirm_of"].map(lookup[p]))


# A figure as units.py writes it: 2.4389, 1.03e-03, 12,345, -21.0%, 0.93
_FIGURE = re.compile(r"[+-]?(\d[\d,]*)?\.?\d+(e[+-]?\d+)?%?")


def markdown_table(table: pd.DataFrame) -> str:
    """A table in Markdown as a person reads it: columns of figures right-aligned, text left.

    The cells are text already (units.py rounds each figure), so the table printer cannot tell figures apart."""
    def figures(col: pd.Series) -> bool:
        cells = [str(v) for v in col if v is not None and str(v) not in ("", "nan", "<NA>")]
        return bool(cells) and all(_FIGURE.fullmatch(c) for c in cells)

    align = ["right" if figures(table[c]) else "left" for c in table.columns]
    return table.to_markdown(index=False, disable_numparse=True, colalign=align)


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The table a person reads: memory in MiB, figures rounded as tune.core.units rounds them, short names."""
    def whole(col: pd.Series, unit: units.Unit = units.WHOLE) -> pd.Series:
        # integers that may be missing (an OOM trial has no steps)
        return pd.Series([unit.value(v) for v in col], index=col.index, dtype="Float64").round(0).astype("Int64")

    def shown(col: pd.Series, unit: units.Unit) -> pd.Series:
        # As text: a table printer would drop a loss's trailing zeros (2.47 beside 2.4766)
        return pd.Series([None if units.missing(v) else unit.text(v) for v in pd.to_numeric(col, errors="coerce")],
                         index=col.index, dtype=object)

    table = pd.DataFrame({
        "trial": [label(r) for _, r in df.iterrows()], "status": df["status"],
        "retry_of": df["retry_of"],
        "batch": whole(df["batch_size"]), "block": whole(df["block_size"]), "embed": whole(df["n_embed"]),
        "heads": whole(df["n_head"]), "layers": whole(df["n_layer"]),
        "lr": shown(df["learning_rate"], units.LR),
        **{p: df[p].map(schema.param_text).astype(object) for p in extra_params(df)},
        "rung": [f"{int(r)}/{int(n)}" if pd.notna(r) and pd.notna(n) else "" for r, n in zip(df["rung"], df["rungs"])],
        "loss_at_rung": shown(df["rung_loss"], units.LOSS),
        "k tok/s": shown(df["tokens_per_s"], units.KTOK),
        "peak MiB": whole(df["peak_memory_bytes"], units.MIB), "pred MiB": whole(df["predicted_peak_bytes"], units.MIB),
        "params M": shown(df["n_params"], units.PARAMS),
        "steps": whole(df["steps"]), "epochs": shown(df["epochs"], units.EPOCHS),
        "trial s": shown(df["trial_seconds"], units.SECONDS),
        "flags": _flags(df),
    })
    if df["retry_of"].isna().all():  # a column of blanks says nothing
        table = table.drop(columns="retry_of")
    # Where each trial ran, when the study used more than one worker or machine.
    where = df["worker"].astype(object).fillna("").astype(str)  # an all-missing column is float64: no "" fill
    if df["host"].nunique() > 1:
        where = df["host"].astype(object).fillna("").astype(str) + " " + where
    if where.nunique() > 1:
        table["ran_on"] = where.str.strip()
    if df["warm_start"].notna().any():  # where each warm-start trial's configuration came from
        table["warm_start"] = df["warm_start"].astype(object).fillna("")
    # A missing figure (a pruned trial's tokens/s, a first attempt's retry_of) reads as a blank, not as <NA>.
    return table.astype(object).where(table.notna(), "")


def reference_of(row: pd.Series) -> str | None:
    """The preset a reference row ran; None for a searched trial (pandas reads its empty cell as NaN)."""
    ref = row.get("reference")
    return ref if isinstance(ref, str) and ref else None


def label(row: pd.Series) -> str:
    """'12' for a searched trial, 'ref baby' for a reference preset, 'confirm trial 12 #1' for a confirmation run."""
    confirm_of = row.get("confirm_of")
    if isinstance(confirm_of, str) and confirm_of:
        run = row.get("confirm_run")
        return confirm_label(confirm_of, int(run) if pd.notna(run) else None)
    ref = reference_of(row)
    if ref:
        return f"ref {ref}"
    # A reference trial whose tuner died before it recorded its preset has neither a preset nor a number.
    return str(int(row["number"])) if pd.notna(row.get("number")) else "ref (unrecorded)"


def source_of(row: pd.Series) -> str:
    """The configuration a row trained, named as a confirmation run's `confirm_of` names it ('trial 12',
    'ref baby'): a run's own for an original, the one it repeats for a confirmation run."""
    confirm_of = row.get("confirm_of")
    if isinstance(confirm_of, str) and confirm_of:
        return confirm_of
    ref = reference_of(row)
    if ref is None and pd.isna(row.get("number")):
        return UNRECORDED  # a reference trial whose tuner died before it recorded its preset
    return source_name(None if ref else int(row["number"]), ref)


def originals(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the study and its references: one per configuration tried (not the confirmation runs)."""
    return df[df["confirm_of"].isna()]


def flagged(notes: pd.Series) -> pd.Series:
    """Rows whose warning column (`contended`, `budget_warning`) holds a note; missing or empty: none."""
    return notes.notna() & (notes != "")


def _flags(df: pd.DataFrame) -> pd.Series:
    """'contended' and/or 'short' (budget too short) per trial: figures to take with care."""
    contended, short = flagged(df["contended"]), flagged(df["budget_warning"])
    return pd.Series([", ".join(f for f, on in (("contended", c), ("short", b)) if on)
                      for c, b in zip(contended, short)], index=df.index, dtype=object)


# The column each objective is judged on, and whether lower is better: for the winner and for warm starts.
RANK_BY = {"loss": ("val_loss", True), "throughput": ("tokens_per_s", False)}


def objective_key(objective: str) -> tuple[str, bool]:
    """The column a study's objective is judged on, and whether lower is better."""
    return RANK_BY["loss" if objective == "loss" else "throughput"]


def best_row(df: pd.DataFrame, objective: str) -> pd.Series | None:
    """The best single run that trained to the target: a searched trial or a reference preset (confirmation runs
    are judged with their configuration, by choose_winner)."""
    key, lower = objective_key(objective)
    ok = originals(df)
    ok = ok[ok["status"] == Status.OK]
    if ok.empty:
        return None
    return ok.loc[ok[key].idxmin()] if lower else ok.loc[ok[key].idxmax()]


@dataclass
class Winner:
    """The configuration best.json, best-model/ and summary.md name, and how it was chosen."""

    row: pd.Series  # its original run: the configuration, its figures, its checkpoint (best-model/)
    single: pd.Series  # the best single run: the winner had nothing been confirmed
    table: pd.DataFrame  # confirmation_table: one line per confirmed configuration (empty: none)
    line: pd.Series | None  # the winner's line of the table when its mean chose it; None: chosen by one run


def confirmation_table(df: pd.DataFrame, objective: str, runs: int = CONFIRM_RUNS,
                       rule: str = "all") -> pd.DataFrame:
    """One line per confirmed configuration, those that may win first, best mean first: its runs (the original and
    its `runs` confirmation runs; with rule "sequential", the runs claimed of it), how many trained to the target,
    the objective's mean, sd, min and max over those, and its state: complete (every run trained to the target: it
    may win), failed (a run did not: it cannot win on the runs that happened to succeed) or pending (runs to come).
    """
    key, lower = objective_key(objective)
    repeats = df[df["confirm_of"].notna()]
    if repeats.empty:
        return pd.DataFrame()
    ok = originals(df)
    ok = ok[ok["status"] == Status.OK]
    by_name = {source_of(r): r for _, r in ok.iterrows()}
    rows = []
    for name, group in repeats.groupby("confirm_of", sort=False):
        original = by_name.get(name)
        if original is None:  # its tuner died before recording what it repeats, or the original is gone
            continue
        # Sequential confirmation stops a configuration's runs once the verdict is clear: the runs claimed are its.
        planned = sorted({int(r) for r in group["confirm_run"].dropna()}) if rule == "sequential" else \
            range(1, runs + 1)
        outcomes = {r: _run_outcome(group[group["confirm_run"] == r]) for r in planned}
        waiting = (Status.RUNNING, Status.QUEUED)
        done = {r: o for r, o in outcomes.items() if o is not None and o["status"] not in waiting}
        good = [o for o in done.values() if o["status"] == Status.OK]
        failed = [f"#{r} {o['status']}" for r, o in done.items() if o["status"] != Status.OK]
        values = pd.Series([original[key], *(o[key] for o in good)], dtype=float)
        rows.append({
            "configuration": name, "row": original.name, "runs": 1 + len(outcomes), "n": len(values),
            "mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(), "max": values.max(),
            "state": "failed" if failed else "complete" if len(done) == len(outcomes) else "pending",
            "failed": ", ".join(failed), "pending": len(outcomes) - len(done),
            "seeds": [int(o["confirm_seed"]) for o in good if pd.notna(o["confirm_seed"])],
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["_last"] = table["state"] != "complete"
    return table.sort_values(["_last", "mean"], ascending=[True, lower]).drop(columns="_last")


def _run_outcome(attempts: pd.DataFrame) -> pd.Series | None:
    """One confirmation run over its attempts: the attempt that counted (a retry that ran), else the latest."""
    if attempts.empty:
        return None
    counted = attempts[attempts["status"].isin(COUNTED)]
    return (counted if not counted.empty else attempts).iloc[-1]


def choose_winner(df: pd.DataFrame, settings: dict[str, Any]) -> Winner | None:
    """THE winner: the best mean over each confirmed configuration's runs, among those whose every run trained to
    the target; the best single run when nothing is confirmed (or no confirmation completed). None: no run yet."""
    objective = settings.get("objective", "loss")
    single = best_row(df, objective)
    if single is None:
        return None
    table = confirmation_table(df, objective, settings.get("confirm_runs", CONFIRM_RUNS),
                               confirm_rule(settings))
    complete = table[table["state"] == "complete"] if not table.empty else table
    if complete.empty:
        # No confirmation complete: the best single run, but never one of a configuration whose confirmation failed.
        failed = set(table.loc[table["state"] == "failed", "configuration"]) if not table.empty else set()
        kept = originals(df)
        kept = kept[[source_of(r) not in failed for _, r in kept.iterrows()]]
        row = best_row(kept, objective)
        return Winner(row, single, table, None) if row is not None else None
    line = complete.iloc[0]
    return Winner(df.loc[line["row"]], single, table, line)


def within_noise(winner: Winner) -> pd.DataFrame:
    """The other confirmed configurations whose range of values (min..max over their runs) overlaps the winner's:
    the differences between them and the winner are not to be trusted."""
    line = winner.line
    if line is None:
        return pd.DataFrame()
    t = winner.table
    others = t[(t["state"] == "complete") & (t["configuration"] != line["configuration"])]
    return others[(others["min"] <= line["max"]) & (others["max"] >= line["min"])]


def trial_of(row: pd.Series) -> int | str:
    """A run's trial as best.json names it: its number, or 'reference preset NAME'."""
    ref = reference_of(row)
    return f"reference preset {ref}" if ref else int(row["number"])


def _number(value: Any) -> float | None:
    """A figure for JSON: None where it is missing (JSON has no NaN)."""
    return None if pd.isna(value) else float(value)


def confirmation_provenance(winner: Winner, seed: int | None) -> dict[str, Any]:
    """best.json's account of the confirmation: the winner's mean and spread over its runs, the single-run winner,
    and the configurations within noise of it."""
    out: dict[str, Any] = {"single_run_winner": trial_of(winner.single),
                           "differs_from_single_run_winner": bool(winner.row.name != winner.single.name)}
    line = winner.line
    if line is None:
        out["note"] = ("no confirmed configuration has trained to the target in every run: chosen by its single "
                       "run, unconfirmed" + ("; the single-run winner failed a confirmation run"
                                             if out["differs_from_single_run_winner"] else ""))
        return out
    out.update({
        "rule": "the best mean over each confirmed configuration's runs (its original run and its confirmation "
                "runs with fresh seeds, each to the full target); a configuration with a failed run cannot win",
        "mean": _number(line["mean"]), "sd": _number(line["sd"]), "min": _number(line["min"]),
        "max": _number(line["max"]), "n_runs": int(line["n"]), "seeds": [seed, *line["seeds"]],
        "within_noise_of": list(within_noise(winner)["configuration"]),
    })
    return out


def best_config(row: pd.Series, settings: dict[str, Any], vocab_size: int | None) -> dict[str, Any]:
    """The winner as a complete gptcore config (the config's own to_dict) that trains it from scratch exactly as
    the study did: the same shape, batch, learning rate, schedule, seed, precision and validation windows, for the
    same target budget (seconds of timed training, or steps); 10 evaluations on the way; the device left to auto.
    """
    recorded = row.get("config")
    if isinstance(recorded, dict):  # what the trial itself trained
        model, train = dict(recorded["model"]), dict(recorded["train"])
    else:  # a study recorded before trials kept their config: rebuilt as tune.search.session builds a trial's
        budget = Budget(settings["budget_amount"], settings["budget_unit"]).train_fields()
        shared = {**budget, "eval_iters": settings.get("eval_iters", 4),
                  "eval_batch_size": settings.get("eval_batch_size", 32), "eval_train_split": False,
                  "dtype": settings.get("dtype", "float32"), "seed": settings.get("seed", 0)}
        preset = reference_of(row)
        if preset:
            cfg = to_dict(*from_name(preset))  # a preset won: its own shape, dropout and schedule
            model, train = cfg["model"], {**cfg["train"], **shared}
        else:
            model = {"block_size": int(row["block_size"]), "n_embed": int(row["n_embed"]),
                     "n_head": int(row["n_head"]), "n_layer": int(row["n_layer"]), "dropout": 0.0}
            train = {"batch_size": int(row["batch_size"]), "learning_rate": float(row["learning_rate"]),
                     **schedule_fields(settings.get("schedule", "cosine")), **shared}
        if vocab_size:
            model["vocab_size"] = vocab_size
    steps = int(row["steps"]) if pd.notna(row.get("steps")) else 1000
    # The study evaluated only at its rungs; a person training it wants to watch the loss: 10 evaluations.
    train.update(eval_interval=max(1, steps // 10), device="auto")
    return to_dict(ModelConfig(**model), TrainConfig(**train))


def provenance(row: pd.Series, study: optuna.Study) -> dict[str, Any]:
    """Where best.json comes from and what it does: study, trial, its loss at the target, device, versions."""
    settings, env = study.user_attrs.get("settings", {}), study.user_attrs.get("environment", {})
    return {
        "study": study.study_name, "trial": trial_of(row), "val_loss_at_target": _number(row["val_loss"]),
        "tokens_per_s": _number(row["tokens_per_s"]), "peak_memory_MiB": _number(row["peak_memory_bytes"] / units.MiB),
        "epochs_seen": _number(row.get("epochs")), "target_budget": settings.get("budget"),
        "schedule": settings.get("schedule"), "objective": settings.get("objective"), "corpus": settings.get("corpus"),
        "device": env.get("device_name"), "dtype": settings.get("dtype"),
        "versions": {**versions(), "torch": env.get("torch")},
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rule": "trains this configuration from scratch for the study's target budget (max_seconds of timed "
                "training, or max_iters), with the same learning-rate schedule and the same validation windows "
                "as the study; the model the study trained is in best-model/",
    }


def keep_best_model(row: pd.Series, folder: Path) -> str | None:
    """Copy the winner's checkpoint to `folder/best-model` (atomically); a note when there is none to copy."""
    src = row.get("checkpoint")
    if isinstance(src, str) and not (Path(src) / "state.json").exists():
        host = row.get("host")  # a study shared by several machines: the model is where it trained
        return (f"best-model/: not written - the winner's checkpoint {src} is not on this machine"
                + (f" (it trained on {host})" if isinstance(host, str) and host else ""))
    if not isinstance(src, str):
        return "best-model/: not written (the winner's checkpoint was not kept; see the trial's log)"
    # The path comes from the storage, which anyone can edit: copy only a checkpoint's own files, from a folder
    # inside this study's checkpoints/, each a regular file inside it (no link out, no device).
    try:
        source = inside(folder / "checkpoints", Path(src).absolute(), "the winner's checkpoint")
        files = {name: contained_file(source, name, "a checkpoint file")
                 for name in CHECKPOINT_FILES if os.path.lexists(source / name)}
        need = sum(f.stat().st_size for f in files.values())
        with atomic_dir(folder / "best-model", STATE, "checkpoint", CHECKPOINT_FILES, need=need) as tmp:
            for name, file in files.items():
                shutil.copyfile(file, tmp / name)
    except UserError as exc:  # a crafted path, a full disk: the study's figures stand, the copy is not made
        return f"best-model/: not written - {exc}"
    return None


def oom_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per model size (layers x width): the largest batch x block that ran and the smallest that ran out."""
    d = df.dropna(subset=["n_layer", "n_embed", "batch_size", "block_size"]).copy()
    if d.empty:
        return pd.DataFrame()
    d["tokens_per_step"] = (d["batch_size"] * d["block_size"]).astype(int)
    d["shape"] = d["batch_size"].astype(int).astype(str) + " x " + d["block_size"].astype(int).astype(str)
    ran = d[d["status"].isin([Status.OK, Status.PRUNED, Status.DIVERGED])]  # trained: it fitted
    oom = d[d["status"] == Status.OOM]
    skipped = d[d["status"] == Status.PREDICTED_OOM]
    rows = []
    for (layers, embed), _ in d.groupby(["n_layer", "n_embed"]):
        r, o, s = (f[(f["n_layer"] == layers) & (f["n_embed"] == embed)] for f in (ran, oom, skipped))
        biggest = r.loc[r["tokens_per_step"].idxmax()] if not r.empty else None
        peak = units.MIB.value(biggest["peak_memory_bytes"]) if biggest is not None else None
        smallest = o.loc[o["tokens_per_step"].idxmin()] if not o.empty else None
        first_skip = s.loc[s["tokens_per_step"].idxmin()] if not s.empty else None
        rows.append({
            "layers": int(layers), "embed": int(embed),
            "largest batch x block that ran": biggest["shape"] if biggest is not None else "-",
            # whole MiB; NaN: the run measured no peak (the tables show '-' for it)
            "its peak MiB": "-" if biggest is None else int(peak) if peak is not None else float("nan"),
            "smallest batch x block that OOM'd": smallest["shape"] if smallest is not None else "-",
            "smallest skipped (predicted OOM)": first_skip["shape"] if first_skip is not None else "-",
            "trials": len(r) + len(o) + len(s),
        })
    return pd.DataFrame(rows)


