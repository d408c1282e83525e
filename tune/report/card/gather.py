"""The report card's figures, gathered from a study's storage alone into one JSON-safe dict (tune.report.card.command
renders and writes it)."""

from __future__ import annotations

import math
from dataclasses import astuple
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tune.core.budget import format_seconds
from tune.core.outcomes import OUT_OF_MEMORY, Status
from tune.core.space import PARAMS
from tune.report.card import matmul as card_matmul
from tune.report.curves import study_curves
from tune.report.frame import (
    Winner,
    choose_winner,
    extra_params,
    label,
    objective_key,
    oom_frontier,
    originals,
    time_span,
    trials_frame,
)
from tune.report.predicted import verdict_at_rung


def _value(v: Any) -> Any:
    """A figure for JSON: plain int/float/str, None where missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def trial_record(row: pd.Series, extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """One trial's raw figures on the card (`extra`: the fields the study searched beside the six)."""
    keys = ("status", *PARAMS, *extra, "val_loss", "tokens_per_s", "peak_memory_bytes", "n_params", "steps",
            "trial_seconds", "rung", "rungs", "rung_loss", "stopped_by", "predicted_loss", "predicted_sd")
    # Figures to take with care (summary.md's "flags"): read from the notes, absent columns meaning none.
    flags = [name for name, col in (("contended", "contended"), ("short", "budget_warning"))
             if isinstance(row.get(col), str) and row.get(col)]
    return {"label": label(row), **{k: _value(row.get(k)) for k in keys}, "flags": flags}


def _curves(folder: Path, runs: pd.DataFrame, winner: pd.Series | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The winner's and the references' training curves (tune.report.curves), as plain lists of the curve's
    columns, with the budget's unit the x axis is drawn in."""
    curves, notes = study_curves(folder, runs, winner)
    return {"budget_unit": settings.get("budget_unit", "s"), "notes": notes,
            "runs": [{"name": c.name, "winner": c.winner, "points": [list(astuple(p)) for p in c.points]}
                     for c in curves]}


def stopped_references(runs: pd.DataFrame, winner: Winner | None, settings: dict[str, Any]) -> list[dict[str, str]]:
    """The reference presets stopped at a rung (by the prediction): each one's label and its verdict, as summary.md
    writes it (predicted, not measured)."""
    key, _ = objective_key(settings.get("objective", "loss"))
    answer = None if winner is None else float(winner.line["mean"] if winner.line is not None else winner.row[key])
    refs = runs[runs["reference"].notna() & (runs["status"] == Status.PRUNED)]
    return [{"label": label(r), "text": verdict_at_rung(r, settings, answer, key == "val_loss")}
            for _, r in refs.iterrows()]


def _ran(study: optuna.Study) -> str:
    span = time_span(study)
    return f"{span.text()} ({format_seconds(span.seconds)})" if span else "no trial started yet"


def gather(study: optuna.Study, folder: Path, matmul: card_matmul.Matmul | None) -> dict[str, Any]:
    """Every raw figure the card shows, from the study's storage (and the matmul figures)."""
    env, settings = study.user_attrs.get("environment", {}), study.user_attrs.get("settings", {})
    df = trials_frame(study)
    runs = originals(df)
    extra = extra_params(df)
    winner = choose_winner(df, settings)
    best = None
    if winner is not None:
        best = trial_record(winner.row, extra)
        if winner.line is not None:
            best["confirmed_mean"] = _value(winner.line["mean"])
            best["confirmed_runs"] = int(winner.line["n"])
    frontier = oom_frontier(runs)
    peak = runs["peak_memory_bytes"].max()
    return {
        "study": study.study_name, "folder": str(folder), "ran": _ran(study),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": {k: _value(env.get(k)) for k in ("device", "device_name", "device_type", "cpu",
                                                          "cpu_threads", "torch", "python", "gpu_memory_bytes")},
        "optuna": optuna.__version__,
        "settings": {k: _value(settings.get(k)) for k in ("budget", "dtype", "objective", "memory_limit_bytes",
                                                           "trials", "sampler", "pruner", "model")},
        "counts": {k: int(v) for k, v in runs["status"].value_counts().items()},
        "params": [*PARAMS, *extra],  # the searched parameters, the columns of the card's tables
        "trials": [trial_record(r, extra) for _, r in runs.iterrows()],
        "winner": best,
        "stopped_references": stopped_references(runs, winner, settings),
        "out_of_memory": int(runs["status"].isin(OUT_OF_MEMORY).sum()),
        "largest_peak_bytes": _value(peak),
        "frontier": [{k: _value(v) for k, v in r.items()} for r in frontier.to_dict("records")],
        "curves": _curves(folder, runs, winner.row if winner is not None else None, settings),
        "matmul": None if matmul is None else {
            "source": matmul.source, "note": matmul.note, "missing": matmul.missing, "rows": matmul.rows,
            "peaks": matmul.peaks, "crossover": matmul.crossover},
    }
