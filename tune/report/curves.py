"""The training curves the report draws: the winner's and the references', read from the curve files their trial
processes wrote beside their logs (gptcore.curve), against the study's own budget (training seconds or steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptcore.curve import CurvePoint, curve_path, read_curve
from tune.core.confirm import run_stem
from tune.report.frame import label, reference_of


@dataclass
class RunCurve:
    """One run's curve as drawn: its name ('trial 12', 'ref baby'), whether it won, its points."""

    name: str
    winner: bool
    points: list[CurvePoint]


def log_name(row: pd.Series) -> str | None:
    """The log (and curve) file stem of a run's row, as tune.search.study.job_for names it: trial_0012, ref_baby;
    None for a row that names neither (a confirmation run, a reference that never recorded its preset)."""
    if isinstance(row.get("confirm_of"), str):
        return None
    preset = reference_of(row)
    if preset:
        return run_stem(None, preset)
    return run_stem(int(row["number"]), None) if pd.notna(row.get("number")) else None


def x_axis(settings: dict[str, Any]) -> tuple[str, str]:
    """The curve column the x axis shows and its label: the study's budget, so every run ends at the same x (the
    target) and runs are compared as the study judged them."""
    if settings.get("budget_unit", "s") == "s":
        return "train_seconds", "seconds of timed training (the study's budget; warm-up and evaluation excluded)"
    return "step", "optimiser steps (the study's budget)"


def study_curves(folder: Path, runs: pd.DataFrame, winner: pd.Series | None) -> tuple[list[RunCurve], list[str]]:
    """The winner's curve first, then each reference's that trained to the target; notes for those not found."""
    rows: list[tuple[pd.Series, bool]] = [(winner, True)] if winner is not None else []
    refs = runs[runs["reference"].notna() & (runs["status"] == "ok")]
    rows += [(r, False) for _, r in refs.iterrows() if winner is None or reference_of(r) != reference_of(winner)]
    curves, notes = [], []
    for row, won in rows:
        stem = log_name(row)
        if stem is None:
            continue
        path = curve_path(folder / "logs" / f"{stem}.log")
        try:
            points = read_curve(path)
        except (OSError, ValueError) as exc:
            notes.append(f"{stem}: curve not read ({exc})")
            continue
        if points:
            curves.append(RunCurve(_name(row), won, points))
        else:  # a study shared by several machines: the run's files are where it ran
            notes.append(f"{stem}: no curve in {path.parent} (run before curves were written, or elsewhere)")
    return curves, notes


def _name(row: pd.Series) -> str:
    text = label(row)
    return f"trial {text}" if text.isdigit() else text
