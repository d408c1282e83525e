"""The study's PNGs: every run shown (pruned and out-of-memory ones marked apart), trial numbers on the points,
axes named from the record schema (tune.core.schema)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from gptcore.files import atomic_write
from tune.core import schema
from tune.core.outcomes import OUT_OF_MEMORY, Status
from tune.report.frame import label, objective_key, reference_of
from tune.report.memreport import memory_plot

# Parameter importances (fANOVA) from fewer trials that trained to the target than this say little: not drawn.
MIN_IMPORTANCE_TRIALS = 10


def _pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated in (lower x, lower y)."""
    p = points.sort_values([x, y])
    return p[p[y] < p[y].cummin().shift(fill_value=float("inf"))]


def _numbers(ax: Any, rows: pd.DataFrame, x: str, y: str) -> None:
    """Each point's trial ('12', 'ref baby') beside it, small."""
    for _, r in rows.iterrows():
        if pd.notna(r[x]) and pd.notna(r[y]):
            ax.annotate(label(r), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points", alpha=0.8)


def _kinds(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Searched runs that trained to the target, searched runs stopped at a lower rung, references, and out of
    memory (run or skipped)."""
    refs = df[df["reference"].notna()]
    search = df[df["reference"].isna()]
    return (search[search["status"] == Status.OK], search[search["status"] == Status.PRUNED], refs,
            df[df["status"].isin(OUT_OF_MEMORY)])


def _oom_marks(ax: Any, oom: pd.DataFrame, x: pd.Series, y: float) -> None:
    if not oom.empty:
        ax.scatter(x, [y] * len(oom), marker="x", color="C3", s=60, label=f"out of memory ({len(oom)})",
                   clip_on=False, zorder=4)


def history_plot(df: pd.DataFrame, settings: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """history.png: every searched trial by number at the figure it was judged on, the best so far, the references."""
    import matplotlib.pyplot as plt

    key, lower = objective_key(settings.get("objective", "loss"))
    judged = "rung_loss" if key == "val_loss" else key  # a pruned trial's figure is its loss at its last rung
    ok, pruned, refs, oom = _kinds(df)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok["number"], ok[key], color="C0", zorder=3, label=f"trained to the target ({len(ok)})")
    ax.scatter(pruned["number"], pruned[judged], facecolors="none", edgecolors="0.5", zorder=3,
               label=f"pruned at a lower rung ({len(pruned)})")
    best = ok.sort_values("number").set_index("number")[key]
    best = best.cummin() if lower else best.cummax()
    if not best.empty:  # drawn on to the last trial, so a late plateau shows as one
        last = pd.concat([ok["number"], pruned["number"], oom["number"]]).max()
        xs, ys = [*best.index, max(last, best.index[-1])], [*best.values, best.values[-1]]
        ax.step(xs, ys, where="post", color="C2", label="best so far")
    for i, (_, r) in enumerate(refs[refs["status"] == Status.OK].iterrows()):
        ax.axhline(r[key], color=f"C{4 + i}", linestyle="--", linewidth=1, label=f"reference {reference_of(r)}")
    values = pd.concat([ok[key], pruned[judged], refs[key]]).dropna()
    top = values.max() if lower else values.min()
    searched_oom = oom[oom["reference"].isna()]
    if pd.notna(top):
        _oom_marks(ax, searched_oom, searched_oom["number"], top)
    ax.set(xlabel="trial number", ylabel=schema.label(key) + (" (lower is better)" if lower else " (higher is "
                                                                                                "better)"),
           title="Trials in order: the figure each was judged on")
    ax.legend(fontsize=8, loc="best")
    save(fig, "history.png")


def readable_param(name: str) -> str:
    """'log2(batch_size)' -> 'batch size (drawn as log2)': the parameter a person knows."""
    if name.startswith(("log2(", "log2_")):
        return schema.label(name.removeprefix("log2_").removeprefix("log2(").removesuffix(")")) + " (log2)"
    return schema.label(name) if name in schema.BY_NAME else name


def importance_plot(study: optuna.Study, save: Callable[[Any, str], None]) -> str | None:
    """importances.png from the trials that trained to the target (fANOVA); a note when too few to say."""
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return (f"importances.png: not drawn ({len(done)} trial(s) trained to the target; parameter importances "
                f"need at least {MIN_IMPORTANCE_TRIALS} to mean anything)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return f"importances.png: not drawn ({exc})"
    names = [readable_param(n) for n in importances][::-1]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, list(importances.values())[::-1], color="C0")
    ax.set(xlabel="importance (share of the variance in the objective, fANOVA)",
           title=f"Which parameters mattered, over {len(done)} trials that trained to the target")
    save(fig, "importances.png")
    return None


def _against_memory(df: pd.DataFrame, y: str, y_pruned: str, limit: float | None, oom_at: str) -> tuple[Any, ...]:
    """A figure of `y` against measured peak MiB: searched runs that trained, pruned ones (at `y_pruned`),
    references, trial numbers, the memory limit and the out-of-memory runs at the limit (at the top or the bottom
    of `y`: `oom_at`). Returns (fig, ax, frame of the runs that trained, with their peak in column peak_MiB)."""
    import matplotlib.pyplot as plt

    mem = "peak_MiB"
    frame = df.assign(**{mem: df["peak_memory_bytes"] / schema.MiB})
    ok, pruned, refs, oom = _kinds(frame)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok[mem], ok[y], color="C0", zorder=3, label=f"trained to the target ({len(ok)})")
    ax.scatter(pruned[mem], pruned[y_pruned], facecolors="none", edgecolors="0.5", zorder=3,
               label=f"pruned{': at its last rung' if y_pruned != y else ''} ({len(pruned)})")
    ax.scatter(refs[mem], refs[y], marker="s", color="C4", zorder=3, label="reference presets")
    _numbers(ax, pd.concat([ok, refs, pruned.assign(**{y: pruned[y_pruned]})]), mem, y)
    if limit:
        ax.axvline(limit / schema.MiB, color="C3", linestyle="--", linewidth=1, label="memory limit")
    values = pd.concat([ok[y], refs[y], pruned[y_pruned]]).dropna()
    if not values.empty:
        x = [limit / schema.MiB if limit else frame[mem].max()] * len(oom)
        _oom_marks(ax, oom, pd.Series(x, dtype=float), values.max() if oom_at == "top" else values.min())
    ax.set(xlabel=schema.label("peak_memory_bytes"), ylabel=schema.label(y))
    return fig, ax, pd.concat([ok, refs])


def loss_vs_memory_plot(df: pd.DataFrame, limit: float | None, save: Callable[[Any, str], None]) -> None:
    """loss_vs_memory.png: loss against measured peak for every run that trained, the Pareto front, OOMs."""
    fig, ax, trained = _against_memory(df, "val_loss", "rung_loss", limit, oom_at="top")
    front = _pareto(trained.dropna(subset=["peak_MiB", "val_loss"]), "peak_MiB", "val_loss")
    # The front under the points, its members ringed: the markers must not hide the points they mark.
    ax.step(front["peak_MiB"], front["val_loss"], where="post", color="C3", linewidth=1, zorder=2,
            label="Pareto front")
    ax.scatter(front["peak_MiB"], front["val_loss"], s=110, facecolors="none", edgecolors="C3", zorder=4)
    ax.set_title("Validation loss vs peak memory (lower left is better)")
    ax.legend(fontsize=8)
    save(fig, "loss_vs_memory.png")


def throughput_plot(df: pd.DataFrame, limit: float | None, save: Callable[[Any, str], None]) -> None:
    """throughput_vs_memory.png: tokens/s against measured peak for every run that measured it, OOMs at the limit."""
    fig, ax, _ = _against_memory(df, "tokens_per_s", "tokens_per_s", limit, oom_at="bottom")
    ax.set_title("Training throughput vs peak memory")
    ax.legend(fontsize=8)
    save(fig, "throughput_vs_memory.png")


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
        elif row["status"] == Status.OK:
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
    """Every PNG of the study (one point per configuration tried); notes for the plots that could not be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = study.user_attrs.get("settings", {})

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        atomic_write(folder / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    limit = settings.get("memory_limit_bytes") or study.user_attrs.get("environment", {}).get("gpu_memory_bytes")
    notes = []
    rungs_plot(df, settings, save)
    history_plot(df, settings, save)
    note = importance_plot(study, save)
    if note:  # not drawn now: an older one would show figures the study has moved past
        (folder / "importances.png").unlink(missing_ok=True)
    notes.append(note)
    loss_vs_memory_plot(df, limit, save)
    throughput_plot(df, limit, save)
    notes.append(memory_plot(df, save))
    return [n for n in notes if n]
