"""The data of a comparison: each study as a Side, the speeds of the shapes they share, their geometric mean
(tune.report.compare.render draws them; tune.report.compare.command is `python -m tune compare`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tune.core.outcomes import MEASURED
from tune.report.frame import flagged, trials_frame
from tune.store.load import load_named

# The model and batch shape: what a run's speed depends on. The learning rate changes what a step learns, not
# what it costs, so runs that differ only in it are the same configuration here.
SHAPE = ("batch_size", "block_size", "n_embed", "n_head", "n_layer")


@dataclass(frozen=True)
class Side:
    """One study of the comparison: its column name, every run it holds, its environment and settings."""

    name: str
    given: str  # as named on the command line: a results folder or a study name
    study: optuna.Study
    folder: Path
    df: pd.DataFrame  # tune.report.frame.trials_frame: references, searched trials, confirmation runs
    env: dict[str, Any]
    settings: dict[str, Any]






def load_sides(args: list[str], *, storage: str | None, results: Path) -> list[Side]:
    """Open every study (UserError naming the first that cannot be read) and name its column."""
    loaded = [load_named(a, storage=storage, results=results) for a in args]
    raw = [(lo, lo.study.user_attrs.get("environment", {}), lo.study.user_attrs.get("settings", {}))
           for lo in loaded]
    names = column_names([(env, settings, lo.study.study_name) for lo, env, settings in raw])
    return [Side(n, arg, lo.study, lo.folder, trials_frame(lo.study), env, settings)
            for n, arg, (lo, env, settings) in zip(names, args, raw)]


def column_names(studies: list[tuple[dict[str, Any], dict[str, Any], str]]) -> list[str]:
    """Per (environment, settings, study name): 'device dtype', with the study name where two would collide,
    and a position where even that does (the same study given twice)."""
    base = [f"{env.get('device_name') or env.get('device') or 'unknown device'} {settings.get('dtype') or '?'}"
            for env, settings, _ in studies]
    names = [f"{b} ({s})" if base.count(b) > 1 else b for b, (_, _, s) in zip(base, studies)]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def default_folder(sides: list[Side]) -> str:
    """compare-A-vs-B: the study names, made safe for a folder name."""
    return "compare-" + "-vs-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", s.study.study_name) for s in sides)


# --- the figures ---------------------------------------------------------------------------------------------


def speeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape (SHAPE, the index): the median tokens/s over every run that measured it, how many runs, and how
    many of them other processes competed with (tune's contention check: their tokens/s understate the shape)."""
    # Runs that measured the step and trained to an end they report (a timeout is killed before it says its speed).
    runs = df[df["status"].isin(MEASURED) & df["tokens_per_s"].notna()].dropna(subset=list(SHAPE))
    runs = runs.astype({k: int for k in SHAPE}).assign(contended=flagged(runs["contended"]))
    grouped = runs.groupby(list(SHAPE))
    return pd.DataFrame({"tokens_per_s": grouped["tokens_per_s"].median().astype(float), "runs": grouped.size(),
                         "contended": grouped["contended"].sum().astype(int)})


def shared_speeds(sides: list[Side]) -> pd.DataFrame:
    """The shapes every study ran: per study i, its median tokens/s (`tokens_per_s_i`), runs (`runs_i`) and
    contended runs (`contended_i`); per later study, its speed-up over the first (`speedup_i`: study i's tokens/s
    over the baseline's)."""
    tables = [speeds(s.df) for s in sides]
    common = tables[0].index
    for t in tables[1:]:
        common = common.intersection(t.index)
    out = pd.DataFrame(index=common.sort_values())
    for i, t in enumerate(tables):
        out[f"tokens_per_s_{i}"] = t["tokens_per_s"].reindex(out.index)
        out[f"runs_{i}"] = t["runs"].reindex(out.index)
        out[f"contended_{i}"] = t["contended"].reindex(out.index)
    for i in range(1, len(tables)):
        out[f"speedup_{i}"] = out[f"tokens_per_s_{i}"] / out["tokens_per_s_0"]
    return out


def geometric_mean(values: pd.Series) -> float:
    """The geometric mean of positive ratios (NaN when there are none): the fair average of speed-ups."""
    v = values.dropna()
    return math.exp(sum(math.log(x) for x in v) / len(v)) if len(v) else math.nan
