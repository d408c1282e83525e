"""A study's results folder, from the storage alone: trials.csv, best.json, best-model/, summary.md, plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pandas as pd

from gptcore.files import atomic_write, atomic_write_text
from tune.core import schema
from tune.report.frame import (
    best_config,
    choose_winner,
    confirmation_provenance,
    extra_params,
    keep_best_model,
    originals,
    provenance,
    trials_frame,
)
from tune.report.keep import checkpoints_lock, holds, prune
from tune.report.plots import write_plots
from tune.report.summary import summary_markdown
from tune.store.storage import load_references


def write_report(study: optuna.Study, folder: Path, *, plots: bool = True,
                 keep_models: int | None = None) -> pd.DataFrame:
    """Write trials.csv, summary.md, best.json (when there is a best) and the plots into `folder`.

    keep_models: the study is over (no run still to come anywhere): once best-model/ is copied, only the best
    `keep_models` checkpoints stay (tune.report.keep); None leaves the checkpoints as they are.
    """
    folder.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    atomic_write(folder / "trials.csv", lambda tmp: schema.csv_frame(df, extra_params(df)).to_csv(tmp, index=False))
    settings = study.user_attrs.get("settings", {})
    winner = choose_winner(df, settings)
    notes, copied = [], True
    if winner is not None:
        vocab = study.user_attrs.get("vocab_size")
        origin = provenance(winner.row, study)
        if not winner.table.empty:
            origin["confirmation"] = confirmation_provenance(winner, settings.get("seed"))
        cfg = {**best_config(winner.row, settings, vocab), "provenance": origin}
        atomic_write_text(folder / "best.json", json.dumps(cfg, indent=1) + "\n")
        with checkpoints_lock(folder):  # no tuner prunes the winner's checkpoint while it is copied
            # The original run's model (confirmation runs keep none); already there if its checkpoint was pruned.
            kept = (not os.path.lexists(str(winner.row.get("checkpoint"))) and holds(folder / "best-model", winner.row))
            note = None if kept else keep_best_model(winner.row, folder)
        notes += [note] if note else []
        copied = note is None
    if keep_models is not None and copied:  # a winner best-model/ does not hold keeps its checkpoint
        prune(folder, study, load_references(study), keep_models)
    if plots:
        # one point per configuration tried; the winner's curve
        notes += write_plots(study, originals(df), folder, winner.row if winner is not None else None)
    atomic_write_text(folder / "summary.md", summary_markdown(study, df, folder, notes))
    return df
