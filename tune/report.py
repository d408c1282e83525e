"""Results of a study, from the storage alone: trials.csv, summary.md, best.json and plots."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from gptcore.config import from_name, to_dict
from gptcore.files import atomic_dir, atomic_write, atomic_write_text
from tune import health
from tune.budget import Budget, schedule_fields
from tune.dispatch import CONFIRM_RUNS, confirm_label, source_name
from tune.memreport import memory_plot, memory_section
from tune.outcomes import COUNTED_STATUSES, STATUSES
from tune.space import PARAMS, Space, preset_params
from tune.storage import load_confirms, load_references

COLUMNS = ["number", "reference", "status", "state", "retry_of", "warm_start",
           "confirm_of", "confirm_run", "confirm_seed", *PARAMS, "rung", "rungs", "rung_loss",
           "reached_target", "val_loss", "train_loss", "steps", "tokens", "tokens_per_s",
           "train_seconds", "eval_seconds", "eval_share", "warmup_steps", "warmup_seconds", "trial_seconds",
           "startup_seconds", "peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes", "peak_data_bytes",
           "measured_peak_bytes", "predicted_peak_bytes", "mem_traced_bytes", "mem_resident_bytes", "mem_large_bytes",
           "mem_baseline_bytes", "mem_predict_seconds", "mem_ratio", "mem_overhead_bytes", "mem_limit_bytes",
           "mem_trace_error", "n_params", "mfu",
           "device", "host", "tuner_pid", "worker", "threads", "cpu_share", "others_cores", "load_1m",
           "gpu_uuid", "gpu_other_processes", "gpu_util_percent",
           "contended", "budget_warning", "oom_phase", "oom_requested_bytes", "error", "checkpoint",
           "parent_rss_bytes"]
PLOTS = ("rungs.png", "history.png", "importances.png", "loss_vs_memory.png", "throughput_vs_memory.png",
         "memory.png")


# What a confirmation run's row says it repeats when its tuner died before recording it.
UNRECORDED = "(unrecorded)"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, the references first, then the searched trials, then the confirmation runs (from the
    trials' user attributes), plus the loss at every rung."""
    refs, confirms = load_references(study), load_confirms(study)
    frames = [_frame(refs, "reference")] if refs is not None else []
    frames.append(_frame(study, "search"))
    if confirms is not None:
        frames.append(_frame(confirms, "confirm"))
    df = pd.concat([f for f in frames if not f.empty] or frames, ignore_index=True)
    # The peak a memory limit counts (tune.record.measured_peak); studies recorded before it: CUDA max allocated,
    # else the trial process's peak RSS.
    peaks = df[["measured_peak_bytes", "peak_allocated_bytes", "peak_rss_bytes"]].apply(pd.to_numeric, errors="coerce")
    df["peak_memory_bytes"] = peaks.bfill(axis=1).iloc[:, 0]
    _fill_from_source(df)
    return df


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's status for every table: its recorded outcome; 'running' or 'queued' while it has none; and
    'interrupted' for a trial failed without a record (its tuner was killed: stale, failed by another tuner)."""
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "queued"
    status = trial.user_attrs.get("status")
    if trial.state == TrialState.FAIL and status not in ("error", "interrupted"):
        return "interrupted"  # failed as stale, perhaps while its tuner was still writing its record
    return status or trial.state.name.lower()


def _frame(study: optuna.Study, kind: str) -> pd.DataFrame:
    """The rows of one study; `kind`: search, reference or confirm (numbers only mean something in the search)."""
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
               "status": status_of(t), "retry_of": history[-1] if history and search else None}
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
    df = df.reindex(columns=[*COLUMNS, *extra])
    for col in ("retry_of", "confirm_run", "confirm_seed"):  # whole numbers, or empty
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def _fill_from_source(df: pd.DataFrame) -> None:
    """A confirmation run's row shows its configuration's six values even when its tuner died before recording
    them: they are those of the run it repeats."""
    runs = df["confirm_of"].notna()
    if not runs.any():
        return
    tried = df[~runs]
    lookup = tried[list(PARAMS)].set_axis([source_of(r) for _, r in tried.iterrows()])
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    for p in PARAMS:
        df.loc[runs, p] = df.loc[runs, p].fillna(df.loc[runs, "confirm_of"].map(lookup[p]))


def _mib(series: pd.Series) -> pd.Series:
    return (series / 2**20).round(0)


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The table a person reads: memory in MiB, rounded figures, short column names."""
    def whole(col: pd.Series) -> pd.Series:
        return col.round(0).astype("Int64")  # integers that may be missing (an OOM trial has no steps)

    table = pd.DataFrame({
        "trial": [label(r) for _, r in df.iterrows()], "status": df["status"],
        "retry_of": df["retry_of"],
        "batch": whole(df["batch_size"]), "block": whole(df["block_size"]), "embed": whole(df["n_embed"]),
        "heads": whole(df["n_head"]), "layers": whole(df["n_layer"]),
        "lr": df["learning_rate"].map(lambda v: f"{v:.2e}" if pd.notna(v) else ""),
        "rung": [f"{int(r)}/{int(n)}" if pd.notna(r) and pd.notna(n) else "" for r, n in zip(df["rung"], df["rungs"])],
        "loss_at_rung": df["rung_loss"].round(4), "tokens/s": whole(df["tokens_per_s"]),
        "peak_MiB": whole(df["peak_memory_bytes"] / 2**20), "pred_MiB": whole(df["predicted_peak_bytes"] / 2**20),
        "params_M": (df["n_params"] / 1e6).round(2),
        "steps": whole(df["steps"]), "trial_s": df["trial_seconds"].round(1),
        "flags": _flags(df),
    })
    # Where each trial ran, when the study used more than one worker or machine.
    where = df["worker"].fillna("").astype(str)
    if df["host"].nunique() > 1:
        where = df["host"].fillna("").astype(str) + " " + where
    if where.nunique() > 1:
        table["ran_on"] = where.str.strip()
    if df["warm_start"].notna().any():  # where each warm-start trial's configuration came from
        table["warm_start"] = df["warm_start"].fillna("")
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
    ok = ok[ok["status"] == "ok"]
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


def confirmation_table(df: pd.DataFrame, objective: str, runs: int = CONFIRM_RUNS) -> pd.DataFrame:
    """One line per confirmed configuration, those that may win first, best mean first: its runs (the original and
    its `runs` confirmation runs), how many trained to the target, the objective's mean, sd, min and max over those,
    and its state: complete (every run trained to the target: it may win), failed (a run did not: it cannot win on
    the runs that happened to succeed) or pending (runs still to come)."""
    key, lower = objective_key(objective)
    repeats = df[df["confirm_of"].notna()]
    if repeats.empty:
        return pd.DataFrame()
    ok = originals(df)
    ok = ok[ok["status"] == "ok"]
    by_name = {source_of(r): r for _, r in ok.iterrows()}
    rows = []
    for name, group in repeats.groupby("confirm_of", sort=False):
        original = by_name.get(name)
        if original is None:  # its tuner died before recording what it repeats, or the original is gone
            continue
        outcomes = {r: _run_outcome(group[group["confirm_run"] == r]) for r in range(1, runs + 1)}
        done = {r: o for r, o in outcomes.items() if o is not None and o["status"] not in ("running", "queued")}
        good = [o for o in done.values() if o["status"] == "ok"]
        failed = [f"#{r} {o['status']}" for r, o in done.items() if o["status"] != "ok"]
        values = pd.Series([original[key], *(o[key] for o in good)], dtype=float)
        rows.append({
            "configuration": name, "row": original.name, "runs": 1 + runs, "n": len(values),
            "mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(), "max": values.max(),
            "state": "failed" if failed else "complete" if len(done) == runs else "pending",
            "failed": ", ".join(failed), "pending": runs - len(done),
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
    counted = attempts[attempts["status"].isin(COUNTED_STATUSES)]
    return (counted if not counted.empty else attempts).iloc[-1]


def choose_winner(df: pd.DataFrame, settings: dict[str, Any]) -> Winner | None:
    """THE winner: the best mean over each confirmed configuration's runs, among those whose every run trained to
    the target; the best single run when nothing is confirmed (or no confirmation completed). None: no run yet."""
    objective = settings.get("objective", "loss")
    single = best_row(df, objective)
    if single is None:
        return None
    table = confirmation_table(df, objective, settings.get("confirm_runs", CONFIRM_RUNS))
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
    """The winner as a gptcore config that trains it from scratch exactly as the study did, to the same target.

    Same shape, batch, learning rate and schedule, the same budget (seconds of timed training or steps), the
    same validation windows (so its val loss compares with the study's figures); 10 evaluations on the way.
    """
    steps = int(row["steps"]) if pd.notna(row["steps"]) else 1000
    budget = Budget(settings["budget_amount"], settings["budget_unit"]).train_fields()
    shared = {**budget, "eval_interval": max(1, steps // 10), "eval_iters": settings.get("eval_iters", 4),
              "eval_batch_size": settings.get("eval_batch_size", 32), "eval_train_split": False,
              "dtype": settings.get("dtype", "float32"), "seed": settings.get("seed", 0)}
    preset = reference_of(row)
    if preset:
        cfg = to_dict(*from_name(preset))  # a preset won: its own shape, dropout and schedule
        model, train = cfg["model"], {**cfg["train"], **shared}
        train.pop("device", None)
    else:
        model = {"block_size": int(row["block_size"]), "n_embed": int(row["n_embed"]),
                 "n_head": int(row["n_head"]), "n_layer": int(row["n_layer"]), "dropout": 0.0}
        train = {"batch_size": int(row["batch_size"]), "learning_rate": float(row["learning_rate"]),
                 **schedule_fields(settings.get("schedule", "cosine")), **shared}
    if vocab_size:
        model["vocab_size"] = vocab_size
    return {"model": model, "train": train}


def provenance(row: pd.Series, study: optuna.Study) -> dict[str, Any]:
    """Where best.json comes from and what it does: study, trial, its loss at the target, device, versions."""
    settings, env = study.user_attrs.get("settings", {}), study.user_attrs.get("environment", {})
    return {
        "study": study.study_name, "trial": trial_of(row), "val_loss_at_target": _number(row["val_loss"]),
        "target_budget": settings.get("budget"), "schedule": settings.get("schedule"),
        "device": env.get("device_name"), "torch": env.get("torch"), "optuna": optuna.__version__,
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
    with atomic_dir(folder / "best-model", "state.json", "checkpoint") as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return None


def oom_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per model size (layers x width): the largest batch x block that ran and the smallest that ran out."""
    d = df.dropna(subset=["n_layer", "n_embed", "batch_size", "block_size"]).copy()
    if d.empty:
        return pd.DataFrame()
    d["tokens_per_step"] = (d["batch_size"] * d["block_size"]).astype(int)
    d["shape"] = d["batch_size"].astype(int).astype(str) + " x " + d["block_size"].astype(int).astype(str)
    ran = d[d["status"].isin(["ok", "pruned", "diverged"])]
    oom = d[d["status"] == "oom"]
    skipped = d[d["status"] == "predicted_oom"]
    rows = []
    for (layers, embed), _ in d.groupby(["n_layer", "n_embed"]):
        r, o, s = (f[(f["n_layer"] == layers) & (f["n_embed"] == embed)] for f in (ran, oom, skipped))
        biggest = r.loc[r["tokens_per_step"].idxmax()] if not r.empty else None
        smallest = o.loc[o["tokens_per_step"].idxmin()] if not o.empty else None
        first_skip = s.loc[s["tokens_per_step"].idxmin()] if not s.empty else None
        rows.append({
            "layers": int(layers), "embed": int(embed),
            "largest batch x block that ran": biggest["shape"] if biggest is not None else "-",
            "its peak MiB": _mib(pd.Series([biggest["peak_memory_bytes"]])).iloc[0] if biggest is not None else "-",
            "smallest batch x block that OOM'd": smallest["shape"] if smallest is not None else "-",
            "smallest skipped (predicted OOM)": first_skip["shape"] if first_skip is not None else "-",
            "trials": len(r) + len(o) + len(s),
        })
    return pd.DataFrame(rows)


def summary_markdown(study: optuna.Study, df: pd.DataFrame, folder: Path) -> str:
    """summary.md: environment, budget, counts, best, confirmation, top 10, OOM frontier, search space."""
    env = study.user_attrs.get("environment", {})
    settings = study.user_attrs.get("settings", {})
    objective = settings.get("objective", "loss")
    lines = [f"# Study `{study.study_name}`", ""]
    lines += ["## Environment", "", pd.DataFrame({"": list(env), "value": [str(v) for v in env.values()]})
              .to_markdown(index=False), ""]
    limit = settings.get("memory_limit_bytes")
    meaning = "validation loss, lower is better" if objective == "loss" else "training tokens/s, higher is better"
    rungs = settings.get("rungs") or [1.0]
    lines += ["## Target and rungs", "",
              f"- target: **{settings.get('budget')}** of training per configuration (evaluation excluded); the "
              f"winner is the configuration with the best {meaning.split(',')[0]} *at that budget*",
              f"- rungs at {', '.join(f'{f:.3g}' for f in rungs)} of the target (reduction factor "
              f"{settings.get('reduction_factor')}, pruner {settings.get('pruner')}): only the best 1/"
              f"{settings.get('reduction_factor')} at a rung train on; learning-rate schedule "
              f"**{settings.get('schedule')}** to the target, the same in every trial and in best.json",
              f"- objective: **{objective}** ({meaning}), validation on {settings.get('eval_iters')} batches "
              f"of {settings.get('eval_batch_size')} windows, the same for every trial",
              f"- precision {settings.get('dtype')}, sampler {settings.get('sampler')}, "
              f"memory limit {f'{limit / 2**20:,.0f} MiB' if limit else 'none (the whole device)'}",
              f"- corpus {settings.get('corpus')}", ""]
    runs = originals(df)
    search = runs[runs["reference"].isna()]
    counts = search["status"].value_counts().reindex(STATUSES, fill_value=0)
    counted = int(search["status"].isin(COUNTED_STATUSES).sum())
    retries = int(search["retry_of"].notna().sum())
    lines += ["## Trials per status", "",
              f"{counted} counted trial(s) of the {settings.get('trials', counted)} asked for (ok, pruned, oom, "
              f"predicted_oom, diverged, timeout: outcomes of the configuration). Errors and interruptions are "
              f"kept here but not counted; each is queued again once with the same parameters ({retries} retr"
              f"{'y' if retries == 1 else 'ies'} so far).", "",
              counts[counts > 0].rename("trials").to_frame().to_markdown(), ""]
    lines += rung_section(search, len(rungs))
    winner = choose_winner(df, settings)
    lines += verdict_section(winner, df, objective, folder)
    lines += confirmation_section(winner, objective)
    lines += measurement_section(study, df)
    lines += warm_start_section(study, runs, objective)
    ok = runs[runs["status"] == "ok"]
    if not ok.empty:
        top = ok.sort_values("val_loss" if objective == "loss" else "tokens_per_s", ascending=objective == "loss")
        lines += ["## Top 10 at the target", "", "Searched trials that trained to the target, and the references "
                  "(one run each: the confirmation runs are in their own section).",
                  "", readable(top.head(10)).to_markdown(index=False), ""]
    lines += memory_section(runs, settings, label)
    frontier = oom_frontier(runs)
    if not frontier.empty:
        lines += ["## Out-of-memory frontier", "", "Per model size, the largest batch x block that trained, the "
                  "smallest that ran out of memory, and the smallest skipped as predicted out of memory (the "
                  "predicted boundary: memory.png draws it).", "", frontier.to_markdown(index=False), ""]
    space = settings.get("space")
    if space:
        lines += ["## Search space", "", pd.DataFrame(space, index=["low", "high"]).T.to_markdown(), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in PLOTS] + [""]
    return "\n".join(lines)


def verdict_section(winner: Winner | None, df: pd.DataFrame, objective: str, folder: Path) -> list[str]:
    """The winner at the target, and by how much it beats each reference preset (or that it does not): by their
    means over their runs where their confirmation completed, else by their single runs."""
    if winner is None:
        return ["## Verdict", "", "No configuration trained to the target yet.", ""]
    best = winner.row
    key, lower = objective_key(objective)
    name = f"the `{reference_of(best)}` preset (a reference)" if reference_of(best) else f"trial {int(best['number'])}"
    score, what = _figure(winner, best, key)
    over = f" over {int(winner.line['n'])} runs (see Confirmation)" if winner.line is not None else ""
    lines = ["## Verdict", "", f"Best at the target: **{name}**, {what} {score:.4g}{over}.", ""]
    tried = originals(df)
    for _, ref in tried[tried["reference"].notna()].iterrows():
        if ref["status"] != "ok":
            lines.append(f"- reference `{ref['reference']}`: {ref['status']} ({ref['error'] or 'no value'})")
            continue
        value, its = _figure(winner, ref, key)
        gain = (value - score) if lower else (score - value)
        if ref["reference"] == best["reference"]:
            lines.append(f"- reference `{ref['reference']}` ({its} {value:.4g}) is the winner: no searched "
                         f"configuration beat it at this budget")
        else:
            lines.append(f"- beats reference `{ref['reference']}` ({its} {value:.4g}) by {gain:.4g} "
                         f"({gain / abs(value):.1%})" if gain > 0 else
                         f"- does not beat reference `{ref['reference']}` ({its} {value:.4g})")
    lines += ["", readable(best.to_frame().T).to_markdown(index=False), "",
              f"Train it from scratch, the same way and for the same budget: "
              f"`python -m gptcore train --config {folder / 'best.json'}`.",
              f"Or use the model it trained in the study: `python -m gptcore sample --checkpoint "
              f"{folder / 'best-model'}` (continue it with `train --out {folder / 'best-model'} --resume`).", ""]
    return lines


def _figure(winner: Winner, row: pd.Series, key: str) -> tuple[float, str]:
    """What the verdict compares for a configuration, and its name: its mean where its confirmation completed,
    else its single run's figure."""
    t = winner.table
    if not t.empty:
        hit = t[(t["configuration"] == source_of(row)) & (t["state"] == "complete")]
        if not hit.empty:
            return float(hit.iloc[0]["mean"]), f"mean {key}"
    return float(row[key]), key


def confirmation_section(winner: Winner | None, objective: str) -> list[str]:
    """The confirmed configurations (runs, mean ± sd, min..max), whether the mean changed the winner, and whether
    the top configurations are within noise of each other."""
    if winner is None or winner.table.empty:
        return []
    key, _ = objective_key(objective)
    t = winner.table
    extra = int(t["runs"].max()) - 1
    lines = ["## Confirmation", "",
             f"The best configurations that trained to the target were trained {extra} more time(s) each with fresh "
             f"seeds, to the full target and never pruned. A configuration's figure is its mean {key} over its runs "
             f"(the original run and the confirmation runs); one with a run that did not train to the target "
             f"(an error, divergence, out of memory, a timeout) cannot win on the runs that happened to succeed.", "",
             f"| configuration | runs that trained to the target | mean ± sd of {key} | min..max | |",
             "| --- | --- | --- | --- | --- |"]
    for _, r in t.iterrows():
        runs = f"{int(r['n'])} of {int(r['runs'])}" + (f" ({r['failed']})" if r["failed"] else "")
        runs += f", {int(r['pending'])} pending" if r["pending"] else ""
        sd = f" ± {r['sd']:.2g}" if pd.notna(r["sd"]) else ""
        note = ("**winner**" if winner.line is not None and r["configuration"] == winner.line["configuration"]
                else "cannot win: a run failed" if r["state"] == "failed"
                else "not judged yet" if r["state"] == "pending" else "")
        lines.append(f"| {r['configuration']} | {runs} | {r['mean']:.4g}{sd} | {r['min']:.4g}..{r['max']:.4g} | "
                     f"{note} |")
    lines.append("")
    single, single_name = winner.single, source_of(winner.single)
    if winner.line is None:
        row = winner.row
        if row.name == single.name:
            lines.append(f"No confirmed configuration has trained to the target in every run yet: the winner is the "
                         f"single-run winner, {single_name} ({key} {single[key]:.4g} in one run), unconfirmed.")
        else:
            lines.append(f"No confirmed configuration has trained to the target in every run: the winner is the best "
                         f"single run of a configuration that did not fail one, {source_of(row)} ({key} "
                         f"{row[key]:.4g}), unconfirmed; the single-run winner, {single_name}, failed a "
                         f"confirmation run.")
        return [*lines, ""]
    line = winner.line
    if winner.row.name == single.name:
        lines.append(f"The confirmed winner is also the single-run winner: **{line['configuration']}**.")
    else:
        lines.append(f"The confirmed winner, **{line['configuration']}** (mean {line['mean']:.4g}), is not the "
                     f"single-run winner, {single_name} ({key} {single[key]:.4g} in one run): that run was partly "
                     f"luck.")
    noise = within_noise(winner)
    if not noise.empty:
        others = ", ".join(f"{r['configuration']} ({r['min']:.4g}..{r['max']:.4g})" for _, r in noise.iterrows())
        lines.append(f"The winner's range over its runs ({line['min']:.4g}..{line['max']:.4g}) overlaps that of "
                     f"{others}: the top configurations are within noise of each other at this budget, and the "
                     f"differences between their means are not to be trusted. Choose among them on other grounds "
                     f"(speed, memory), or confirm with more runs.")
    else:
        rest = t[(t["state"] == "complete") & (t["configuration"] != line["configuration"])]
        if not rest.empty:
            r = rest.iloc[0]
            lines.append(f"The winner's range ({line['min']:.4g}..{line['max']:.4g}) does not overlap the runner-up's, "
                         f"{r['configuration']} ({r['min']:.4g}..{r['max']:.4g}): its lead held in every run.")
    return [*lines, ""]


def rung_section(search: pd.DataFrame, n_rungs: int) -> list[str]:
    """How many trials reached each rung, and how well each rung's loss predicted the loss at the target."""
    lines = ["## Rungs", "", "| rung | trials that reached it | rank correlation with the loss at the target |",
             "| --- | --- | --- |"]
    finished = search[search["status"] == "ok"]
    for k in range(1, n_rungs + 1):
        reached = int((search["rung"] >= k).sum())
        col = f"loss_rung_{k}"
        rho = "-"
        if k < n_rungs and col in finished and finished[col].notna().sum() >= 4:
            pairs = finished[[col, "val_loss"]].dropna()
            rho = f"{spearman(pairs[col], pairs['val_loss']):.2f} over {len(pairs)} trials"
        lines.append(f"| {k} | {reached} | {rho} |")
    return [*lines, "", "Rank correlation (Spearman) is measured over the trials that trained to the target: 1.00 "
            "means the rung ordered them exactly as the target did.", ""]


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (no SciPy needed)."""
    return float(a.rank().corr(b.rank()))


def measurement_section(study: optuna.Study, df: pd.DataFrame) -> list[str]:
    """How far the figures can be trusted: contention at the start and per trial, budgets too short."""
    lines = ["## Measurement", ""]
    busy = study.user_attrs.get("busy_cores_at_start")
    if busy is not None:
        state = "busy" if busy > 0.5 else "quiet"
        lines.append(f"- before the first trial other processes kept {busy:.2f} cores busy ({state})")
    ran = df[df["cpu_share"].notna()]
    if not ran.empty:
        lines.append(f"- CPU share each trial got of what its threads could use: median "
                     f"{ran['cpu_share'].median():.0%}, lowest {ran['cpu_share'].min():.0%} (threads per trial: "
                     f"{', '.join(str(int(t)) for t in sorted(ran['threads'].dropna().unique()))})")
    total = df["train_seconds"].fillna(0) + df["eval_seconds"].fillna(0) + df["warmup_seconds"].fillna(0)
    lines.append(f"- time inside trials: {df['train_seconds'].sum():,.0f} s timed training, "
                 f"{df['warmup_seconds'].sum():,.0f} s warm-up steps, {df['eval_seconds'].sum():,.0f} s evaluation, "
                 f"of {df['trial_seconds'].sum():,.0f} s of trial wall time ({total.sum():,.0f} s accounted)")
    warnings = health.study_warnings({label(r): r.dropna().to_dict() for _, r in df.iterrows()})
    lines += [f"- **warning**: {w}" for w in warnings] or ["- no trial was contended or had too short a budget"]
    flagged = df[df["contended"].notna() | df["budget_warning"].notna()]
    if not flagged.empty:
        lines += ["", "| trial | status | contended | budget |", "| --- | --- | --- | --- |"]
        lines += [f"| {label(r)} | {r['status']} | {r['contended'] if pd.notna(r['contended']) else ''} | "
                  f"{r['budget_warning'] if pd.notna(r['budget_warning']) else ''} |" for _, r in flagged.iterrows()]
    return [*lines, ""]


def warm_start_section(study: optuna.Study, df: pd.DataFrame, objective: str) -> list[str]:
    """Where the study was warm-started from (tune.warmstart), and its warm-start trials against the sampled ones."""
    warm = study.user_attrs.get("warm_start")
    if not warm:
        return []
    key = "val_loss" if objective == "loss" else "tokens_per_s"
    search = df[df["reference"].isna()]
    started, sampled = search[search["warm_start"].notna()], search[search["warm_start"].isna()]
    skipped = [f", {len(warm[k])} {what}" for k, what in (("outside", "outside this search space skipped"),
                                                          ("over_trials", "beyond --trials left out")) if warm.get(k)]
    lines = ["## Warm start", "",
             f"Warm-started from `{warm['given']}` ({warm['source']}): its best configurations that trained to the "
             f"target, ranked by its objective ({warm['objective']}); {len(warm['enqueued'])} enqueued as this "
             f"study's first trials{''.join(skipped)}.", ""]
    best_warm, best_sampled = best_row(started, objective), best_row(sampled, objective)
    for what, best in (("warm-start", best_warm), ("sampled", best_sampled)):
        source = f" ({best['warm_start']})" if best is not None and pd.notna(best["warm_start"]) else ""
        lines.append(f"- best {what} trial: " + (f"{int(best['number'])}{source}, {key} {best[key]:.4g}"
                                                  if best is not None else "none trained to the target"))
    if best_warm is not None and best_sampled is not None:
        gain = best_warm[key] - best_sampled[key] if objective == "loss" else best_sampled[key] - best_warm[key]
        lines.append(f"- the sampler improved on the warm start by {gain:.4g} ({gain / abs(best_warm[key]):.1%})"
                     if gain > 0 else "- no sampled trial beat the warm start")
    return [*lines, "", readable(started).to_markdown(index=False), ""]


def _pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated in (lower x, lower y)."""
    p = points.sort_values([x, y])
    return p[p[y] < p[y].cummin().shift(fill_value=float("inf"))]


def rungs_plot(df: pd.DataFrame, settings: dict[str, Any], save: Any) -> None:
    """Validation loss at every rung: each trial a line (pruned ones fade), the references dashed and named."""
    import matplotlib.pyplot as plt

    fractions = settings.get("rungs") or [1.0]
    amount, unit = settings.get("budget_amount", 1.0), settings.get("budget_unit", "s")
    x = [f * amount for f in fractions]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, row in df.iterrows():
        ys = [row.get(f"loss_rung_{k}") for k in range(1, len(x) + 1)]
        pts = [(xi, yi) for xi, yi in zip(x, ys) if pd.notna(yi)]
        if not pts:
            continue
        xs, ys = zip(*pts)
        if reference_of(row):
            ax.plot(xs, ys, "--o", lw=2, color="C3", label=f"reference {row['reference']}")
            ax.annotate(row["reference"], (xs[-1], ys[-1]), fontsize=8, xytext=(4, 0), textcoords="offset points")
        elif row["status"] == "ok":
            ax.plot(xs, ys, "-o", color="C0", alpha=0.8)
            ax.annotate(str(int(row["number"])), (xs[-1], ys[-1]), fontsize=7, xytext=(4, 0),
                        textcoords="offset points")
        else:
            ax.plot(xs, ys, "-", marker=".", color="0.6", alpha=0.5)
    ax.plot([], [], "-o", color="C0", label="trained to the target (trial number)")
    ax.plot([], [], "-", marker=".", color="0.6", label="stopped at a lower rung")
    ax.set_xscale("log")
    ax.set(xlabel=f"training budget ({'seconds' if unit == 's' else 'steps'}, log scale)",
           ylabel="validation loss", title="Validation loss at each rung")
    ax.legend(fontsize=8)
    save(fig, "rungs.png")


def write_plots(study: optuna.Study, df: pd.DataFrame, folder: Path) -> list[str]:
    """The four PNGs; returns notes for plots that could not be drawn (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    notes = []
    settings = study.user_attrs.get("settings", {})

    def save(fig, name: str) -> None:
        fig.tight_layout()
        atomic_write(folder / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (("history.png", ovm.plot_optimization_history),
                           ("importances.png", ovm.plot_param_importances)):
            if n_complete < 2:
                notes.append(f"{name}: not drawn (needs 2 completed trials, the study has {n_complete})")
                continue
            try:
                ax = plot(study)
                save(ax.figure, name)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                notes.append(f"{name}: not drawn ({exc})")
                plt.close("all")

    rungs_plot(df, settings, save)
    mem_mib = df["peak_memory_bytes"] / 2**20
    ok = df.assign(mem=mem_mib)[df["status"] == "ok"]
    limit = settings.get("memory_limit_bytes") or study.user_attrs.get("environment", {}).get("gpu_memory_bytes")
    oom = df[df["status"] == "oom"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok["mem"], ok["val_loss"], label="ok", alpha=0.7)
    front = _pareto(ok.dropna(subset=["mem", "val_loss"]), "mem", "val_loss")
    ax.step(front["mem"], front["val_loss"], where="post", color="C3", label="Pareto front")
    ax.scatter(front["mem"], front["val_loss"], color="C3", zorder=3)
    ax.set(xlabel="peak memory (MiB)", ylabel="validation loss", title="Validation loss vs peak memory")
    ax.legend()
    save(fig, "loss_vs_memory.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok["mem"], ok["tokens_per_s"], label="ok", alpha=0.7)
    if limit:
        ax.axvline(limit / 2**20, color="C3", linestyle="--", label="memory limit")
    if not oom.empty:
        x = [limit / 2**20] * len(oom) if limit else [ok["mem"].max() if not ok.empty else 0] * len(oom)
        ax.scatter(x, [0] * len(oom), marker="x", color="C3", s=60, label=f"out of memory ({len(oom)})")
    ax.set(xlabel="peak memory (MiB)", ylabel="training tokens/s", title="Throughput vs peak memory")
    ax.legend()
    save(fig, "throughput_vs_memory.png")
    note = memory_plot(df, save)
    return notes + ([note] if note else [])


def write_report(study: optuna.Study, folder: Path, *, plots: bool = True) -> pd.DataFrame:
    """Write trials.csv, summary.md, best.json (when there is a best) and the plots into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    atomic_write(folder / "trials.csv", lambda tmp: df.drop(columns="peak_memory_bytes").to_csv(tmp, index=False))
    settings = study.user_attrs.get("settings", {})
    winner = choose_winner(df, settings)
    notes = []
    if winner is not None:
        vocab = study.user_attrs.get("vocab_size")
        origin = provenance(winner.row, study)
        if not winner.table.empty:
            origin["confirmation"] = confirmation_provenance(winner, settings.get("seed"))
        cfg = {**best_config(winner.row, settings, vocab), "provenance": origin}
        atomic_write_text(folder / "best.json", json.dumps(cfg, indent=1) + "\n")
        note = keep_best_model(winner.row, folder)  # the original run's model: confirmation runs keep none
        notes += [note] if note else []
    text = summary_markdown(study, df, folder)
    if plots:
        notes += write_plots(study, originals(df), folder)  # one point per configuration tried
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(folder / "summary.md", text)
    return df
