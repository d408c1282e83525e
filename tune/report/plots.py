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
from tune.core.units import MiB
from tune.report.curves import RunCurve, study_curves, x_axis
from tune.report.frame import label, objective_key, reference_of
from tune.report.memreport import memory_plot

# Parameter importances (fANOVA) from fewer trials that trained to the target than this say little: not drawn.
MIN_IMPORTANCE_TRIALS = 10
# One colour per reference preset, none of them the searched trials' C0, the pruned grey, the OOM red (C3) or
# the best-so-far green (C2).
REF_COLOURS = ("C4", "C1", "C5", "C6", "C8", "C9", "C7")  # C2: history's best so far
# An axis shows its data's middle: values farther than this many interquartile ranges beyond the quartiles (a
# diverged trial's loss) are clipped, and the plot says so, rather than squashing every other point flat.
OUTLIER_IQRS = 3.0
# Labels whose anchors lie closer than this (pixels) are merged into one ("3, 7"): they would overlap.
LABEL_PX = (22, 9)


def ref_colour(i: int) -> str:
    """The i-th reference preset's colour."""
    return REF_COLOURS[i % len(REF_COLOURS)]


def _plain_formatter() -> Any:
    """Tick labels as plain figures with thousands separators, on a log axis too."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def robust_limits(ax: Any, values: pd.Series, axis: str = "y") -> str | None:
    """Clip `axis` to the values' robust range when an outlier would squash the rest; the note it writes on the
    plot (None: nothing clipped)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) < 4:
        return None
    q1, q3 = v.quantile(0.25), v.quantile(0.75)
    spread = q3 - q1
    low, high = q1 - OUTLIER_IQRS * spread, q3 + OUTLIER_IQRS * spread
    outside = v[(v < low) | (v > high)]
    if spread <= 0 or outside.empty:
        return None
    inside = v[(v >= low) & (v <= high)]
    pad = 0.08 * (inside.max() - inside.min() or abs(inside.max()) or 1.0)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(inside.min() - pad, inside.max() + pad)
    note = (f"{len(outside)} point(s) off the {axis} axis ({', '.join(f'{x:.4g}' for x in sorted(outside)[:3])}"
            f"{', ...' if len(outside) > 3 else ''}): clipped to the middle of the data")
    ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.3", va="bottom")
    return note


def place_labels(ax: Any, points: list[tuple[float, float, str]], offset: tuple[int, int] = (3, 3),
                 fontsize: int = 7) -> None:
    """Write each point's label beside it, merging the labels of points too close to tell apart ('3, 7, 9'), so
    no two labels overlap. Call it once the axes' limits are final."""
    ax.figure.canvas.draw()  # the limits and the transform as they will be saved
    groups: list[tuple[float, float, float, float, list[str]]] = []  # (px, py, x, y, labels)
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        if not (pd.notna(x) and pd.notna(y)):
            continue
        px, py = ax.transData.transform((x, y))
        near = next((g for g in groups if abs(g[0] - px) < LABEL_PX[0] and abs(g[1] - py) < LABEL_PX[1]), None)
        if near is not None:
            near[4].append(text)
        else:
            groups.append((px, py, x, y, [text]))
    for _, _, x, y, texts in groups:
        shown = ", ".join(texts[:4]) + (f" +{len(texts) - 4}" if len(texts) > 4 else "")
        ax.annotate(shown, (x, y), fontsize=fontsize, xytext=offset, textcoords="offset points", alpha=0.8,
                    annotation_clip=True)


def _pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated in (lower x, lower y)."""
    p = points.sort_values([x, y])
    return p[p[y] < p[y].cummin().shift(fill_value=float("inf"))]


def _numbers(ax: Any, rows: pd.DataFrame, x: str, y: str) -> None:
    """Each point's trial ('12', 'ref baby') beside it, small, close ones merged."""
    place_labels(ax, [(r[x], r[y], label(r)) for _, r in rows.iterrows()])


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


def history_plot(df: pd.DataFrame, settings: dict[str, Any], save: Callable[[Any, str], None]) -> str | None:
    """history.png: every searched trial by number at the figure it was judged on, the best so far, the references;
    a note instead when no trial has a figure yet."""
    import matplotlib.pyplot as plt

    key, lower = objective_key(settings.get("objective", "loss"))
    judged = "rung_loss" if key == "val_loss" else key  # a pruned trial's figure is its loss at its last rung
    ok, pruned, refs, oom = _kinds(df)
    values = pd.concat([ok[key], pruned[judged], refs[key]]).dropna()
    if values.empty:
        return "history.png: not drawn (no trial has a figure yet)"
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
        ax.axhline(r[key], color=ref_colour(i), linestyle="--", linewidth=1, label=f"reference {reference_of(r)}")
    robust_limits(ax, values)
    searched_oom = oom[oom["reference"].isna()]
    low, high = ax.get_ylim()
    _oom_marks(ax, searched_oom, searched_oom["number"], high if lower else low)  # at the worst end of the axis
    ax.set(xlabel="trial number", ylabel=schema.label(key) + (" (lower is better)" if lower else " (higher is "
                                                                                                "better)"),
           title="Trials in order: the figure each was judged on")
    ax.legend(fontsize=8, loc="best")
    save(fig, "history.png")
    return None


def readable_param(name: str) -> str:
    """'log2(batch_size)' -> 'batch size (drawn as log2)': the parameter a person knows."""
    if name.startswith(("log2(", "log2_")):
        return schema.label(name.removeprefix("log2_").removeprefix("log2(").removesuffix(")")) + " (log2)"
    return schema.label(name) if name in schema.BY_NAME else schema.param_field(name).label or name


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
    references (a colour each), trial numbers, the memory limit and the out-of-memory runs at the limit (at the top
    or the bottom of `y`: `oom_at`). Returns (fig, ax, frame of the runs that trained, with their peak in column
    peak_MiB); None when no run has both figures."""
    import matplotlib.pyplot as plt

    mem = "peak_MiB"
    frame = df.assign(**{mem: df["peak_memory_bytes"] / MiB})
    ok, pruned, refs, oom = _kinds(frame)
    # A reference stopped at a rung (by the prediction) is drawn where it stopped, as a pruned trial is: its loss
    # there is not a loss at the target, and it is no member of the Pareto front of the runs that trained.
    at = refs[y].where(refs["status"] == Status.OK, refs[y_pruned])
    trained_refs = refs[refs["status"] == Status.OK]
    shown = pd.concat([ok[[mem, y]], refs[[mem]].assign(**{y: at}),
                       pruned[[mem, y_pruned]].set_axis([mem, y], axis=1)]).dropna()
    if shown.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok[mem], ok[y], color="C0", zorder=3, label=f"trained to the target ({len(ok)})")
    ax.scatter(pruned[mem], pruned[y_pruned], facecolors="none", edgecolors="0.5", zorder=3,
               label=f"pruned{': at its last rung' if y_pruned != y else ''} ({len(pruned)})")
    for i, (key, r) in enumerate(refs.iterrows()):
        stopped = r["status"] != Status.OK and y_pruned != y
        ax.scatter([r[mem]], [at[key]], marker="s", zorder=3, color="none" if stopped else ref_colour(i),
                   edgecolors=ref_colour(i), label=f"reference {reference_of(r)}"
                                                   + (": at the rung it stopped at" if stopped else ""))
    if limit:
        ax.axvline(limit / MiB, color="C3", linestyle="--", linewidth=1, label="memory limit")
    if y == "tokens_per_s":  # a fast configuration is data, not an outlier: a log axis keeps every run in view
        if shown[y].min() > 0 and shown[y].max() > 10 * shown[y].min():
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_plain_formatter())  # 10,000 rather than 10^4
    else:  # a diverged loss would squash the others
        robust_limits(ax, shown[y])
    low, high = ax.get_ylim()
    x = [limit / MiB if limit else frame[mem].max()] * len(oom)
    _oom_marks(ax, oom, pd.Series(x, dtype=float), high if oom_at == "top" else low)
    ax.set(xlabel=schema.label("peak_memory_bytes"), ylabel=schema.label(y))
    _numbers(ax, pd.concat([ok, refs.assign(**{y: at}), pruned.assign(**{y: pruned[y_pruned]})]), mem, y)
    return fig, ax, pd.concat([ok, trained_refs])


def loss_vs_memory_plot(df: pd.DataFrame, limit: float | None, save: Callable[[Any, str], None]) -> str | None:
    """loss_vs_memory.png: loss against measured peak for every run that trained, the Pareto front, OOMs."""
    drawn = _against_memory(df, "val_loss", "rung_loss", limit, oom_at="top")
    if drawn is None:
        return "loss_vs_memory.png: not drawn (no run has both a loss and a measured peak yet)"
    fig, ax, trained = drawn
    front = _pareto(trained.dropna(subset=["peak_MiB", "val_loss"]), "peak_MiB", "val_loss")
    # The front under the points, its members ringed: the markers must not hide the points they mark.
    ax.step(front["peak_MiB"], front["val_loss"], where="post", color="C3", linewidth=1, zorder=2,
            label="Pareto front")
    ax.scatter(front["peak_MiB"], front["val_loss"], s=110, facecolors="none", edgecolors="C3", zorder=4)
    ax.set_title("Validation loss vs peak memory (lower left is better)")
    ax.legend(fontsize=8)
    save(fig, "loss_vs_memory.png")
    return None


def throughput_plot(df: pd.DataFrame, limit: float | None, save: Callable[[Any, str], None]) -> str | None:
    """throughput_vs_memory.png: tokens/s against measured peak for every run that measured it, OOMs at the limit."""
    drawn = _against_memory(df, "tokens_per_s", "tokens_per_s", limit, oom_at="bottom")
    if drawn is None:
        return "throughput_vs_memory.png: not drawn (no run has both its tokens/s and a measured peak yet)"
    fig, ax, _ = drawn
    ax.set_title("Training throughput vs peak memory")
    ax.legend(fontsize=8)
    save(fig, "throughput_vs_memory.png")
    return None


def rungs_plot(df: pd.DataFrame, settings: dict[str, Any], save: Any) -> str | None:
    """Validation loss at every rung: each trial a line (pruned ones fade), the references dashed, a colour and a
    name each; a note instead when no run reached a rung yet."""
    import matplotlib.pyplot as plt

    fractions = settings.get("rungs") or [1.0]
    amount, unit = settings.get("budget_amount", 1.0), settings.get("budget_unit", "s")
    x = [f * amount for f in fractions]
    lines = []
    for _, row in df.iterrows():
        ys = [row.get(f"loss_rung_{k}") for k in range(1, len(x) + 1)]
        pts = [(xi, yi) for xi, yi in zip(x, ys) if pd.notna(yi)]
        if pts:
            lines.append((row, *zip(*pts)))
    if not lines:
        return "rungs.png: not drawn (no run reached a rung yet)"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ends, refs = [], 0
    for row, xs, ys in lines:
        if reference_of(row):
            ax.plot(xs, ys, "--o", lw=2, color=ref_colour(refs), label=f"reference {row['reference']}")
            refs += 1
            ends.append((xs[-1], ys[-1], row["reference"]))
        elif row["status"] == Status.OK:
            ax.plot(xs, ys, "-o", color="C0", alpha=0.8)
            ends.append((xs[-1], ys[-1], str(int(row["number"]))))
        else:
            ax.plot(xs, ys, "-", marker=".", color="0.6", alpha=0.5)
    ax.plot([], [], "-o", color="C0", label="trained to the target (trial number)")
    ax.plot([], [], "-", marker=".", color="0.6", label="stopped at a lower rung")
    # A log axis only where the rungs span a range it helps to read (eta**k); one or two close rungs: linear.
    logged = len(x) > 1 and x[-1] >= 4 * x[0]
    if logged:
        ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:.3g}" for v in x])  # as the plan prints the rungs: 6.67, 20
    ax.xaxis.set_minor_formatter(_null_formatter())
    robust_limits(ax, pd.Series([v for _, _, ys in lines for v in ys]))
    ax.set(xlabel=f"training budget ({'seconds' if unit == 's' else 'steps'}{', log scale' if logged else ''})",
           ylabel="validation loss", title="Validation loss at each rung")
    place_labels(ax, ends, offset=(4, 0), fontsize=7)
    ax.legend(fontsize=8)
    save(fig, "rungs.png")
    return None


def curves_figure(curves: list[RunCurve], settings: dict[str, Any]) -> Any:
    """The curves as one figure: each run's validation loss at its evaluations (markers), over its training loss
    (a thin line of the same colour); the winner solid in C0, the references dashed in their colours."""
    import matplotlib.pyplot as plt

    x, xlabel = x_axis(settings)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    refs = 0
    for curve in curves:
        if curve.winner:
            colour, style, width = "C0", "-", 2.0
        else:
            colour, style, width = ref_colour(refs), "--", 1.5
            refs += 1
        train = [(getattr(p, x), p.train_loss) for p in curve.points if p.train_loss is not None]
        val = [(getattr(p, x), p.val_loss) for p in curve.points if p.val_loss is not None]
        if train:
            ax.plot(*zip(*train), style, color=colour, linewidth=0.9, alpha=0.55)
        if val:
            ax.plot(*zip(*val), style, marker="o", color=colour, linewidth=width, markersize=5,
                    label=f"{curve.name}{' (winner)' if curve.winner else ''}: validation {val[-1][1]:.3f}")
    ax.plot([], [], "-", color="0.5", linewidth=0.9, alpha=0.6, label="thin: training loss (mean since the last point)")
    losses = [v for c in curves for p in c.points for v in (p.train_loss, p.val_loss) if v is not None and v > 0]
    logged = bool(losses) and max(losses) >= 2 * min(losses)
    if logged:  # the early fall and the late gains both in view
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_loss_formatter())
        ax.yaxis.set_minor_formatter(_plain_loss_formatter())
    ax.set(xlabel=xlabel, ylabel=f"loss{' (log scale)' if logged else ''}",
           title="Training curves: the winner and the references")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8)
    return fig


def _plain_loss_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:.3g}")


def curves_plot(df: pd.DataFrame, winner: pd.Series | None, folder: Path, settings: dict[str, Any],
                save: Callable[[Any, str], None]) -> str | None:
    """curves.png: the winner's and the references' training curves (the curve files beside their logs)."""
    curves, notes = study_curves(folder, df, winner)
    if not curves:
        why = "; ".join(notes) if notes else "no run has trained to the target yet"
        return f"curves.png: not drawn ({why})"
    save(curves_figure(curves, settings), "curves.png")
    return None


def _null_formatter() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


# The order write_plots draws them in (summary.PLOTS lists them in the order summary.md shows them).
PLOT_FILES = ("rungs.png", "history.png", "importances.png", "loss_vs_memory.png", "throughput_vs_memory.png",
              "memory.png", "curves.png")


def write_plots(study: optuna.Study, df: pd.DataFrame, folder: Path, winner: pd.Series | None = None) -> list[str]:
    """Every PNG of the study (one point per configuration tried); notes for the plots that could not be drawn.
    `winner`: the row of the configuration the report names (its curve is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = study.user_attrs.get("settings", {})

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        atomic_write(folder / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    limit = settings.get("memory_limit_bytes") or study.user_attrs.get("environment", {}).get("gpu_memory_bytes")
    notes = [rungs_plot(df, settings, save), history_plot(df, settings, save), importance_plot(study, save),
             loss_vs_memory_plot(df, limit, save), throughput_plot(df, limit, save), memory_plot(df, save),
             curves_plot(df, winner, folder, settings, save)]
    for name, note in zip(PLOT_FILES, notes):
        if note:  # not drawn now: an older one would show figures the study has moved past
            (folder / name).unlink(missing_ok=True)
    return [n for n in notes if n]
