"""The memory part of a study's report: predicted against measured peak for the trials that ran, what was
skipped, the calibration, and a plot of the frontier with the predicted boundary.

Reads only the trial records (tune.exec.record, tune.memory.judge.record_fields): the one schema every table reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from gptcore.memory import Calibration
from tune.core.outcomes import MEASURED, Status
from tune.core.units import ERROR, MIB, SECONDS, MiB
from tune.memory.judge import SKIP_MARGIN, calibration_points, over_predictions, skip_margin
from tune.report.frame import markdown_table


def predicted_vs_measured(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that trained with a prediction: predicted and measured peak (MiB) and the relative error."""
    ran = df[df["status"].isin(MEASURED) & df["predicted_peak_bytes"].notna()
             & df["measured_peak_bytes"].notna()].copy()
    ran["predicted_MiB"] = ran["predicted_peak_bytes"] / MiB
    ran["measured_MiB"] = ran["measured_peak_bytes"] / MiB
    ran["error"] = (ran["predicted_MiB"] - ran["measured_MiB"]) / ran["measured_MiB"]
    return ran


def study_limit(df: pd.DataFrame) -> float | None:
    """The limit the trials were judged against (the last recorded: a resumed study may have changed it)."""
    known = df["mem_limit_bytes"].dropna() if "mem_limit_bytes" in df else pd.Series(dtype=float)
    return float(known.iloc[-1]) if not known.empty else None


# What sets a run's peak: the shape and the batch (not the learning rate).
SHAPE = ["batch_size", "block_size", "n_embed", "n_head", "n_layer"]


def margin_used(df: pd.DataFrame) -> tuple[float, str]:
    """The skip margin of the last judged trial and why it was that (the constant for studies recorded before
    margins were recorded)."""
    known = df.dropna(subset=["mem_skip_margin"]) if "mem_skip_margin" in df else df.iloc[:0]
    if known.empty:
        return SKIP_MARGIN, "the fixed margin (the study did not record one)"
    last = known.iloc[-1]
    why = last.get("mem_skip_margin_why")
    return float(last["mem_skip_margin"]), why if isinstance(why, str) else ""


def false_skips(df: pd.DataFrame, limit: float) -> tuple[pd.DataFrame, pd.DataFrame, float | None]:
    """Skipped configurations (predicted OOM) that fit: shown (a run of the same shape and batch measured under the
    limit), and likely (their prediction less the study's largest over-prediction is under the limit); and that
    largest over-prediction (None: no run measured what was predicted)."""
    skipped = df[df["status"] == Status.PREDICTED_OOM].dropna(subset=SHAPE)
    fit = df[df["status"].isin(MEASURED) & (df["measured_peak_bytes"] <= limit)].dropna(subset=SHAPE)
    fitting = {tuple(int(v) for v in r) for r in fit[SHAPE].itertuples(index=False)}
    is_shown = pd.Series([tuple(int(v) for v in r) in fitting for r in skipped[SHAPE].itertuples(index=False)],
                         index=skipped.index, dtype=bool)
    errors = over_predictions(r.dropna().to_dict() for _, r in df.iterrows())
    largest = max(errors) if errors else None
    rest = skipped[~is_shown]
    likely = rest[rest["predicted_peak_bytes"] / (1 + largest) <= limit] if largest is not None and largest > 0 \
        else rest.iloc[:0]
    return skipped[is_shown], likely, largest


def _margin_lines(df: pd.DataFrame, limit: float, label: Callable[[pd.Series], str]) -> list[str]:
    """The skip margin used and why; what the evidence supports now; the false skips."""
    share, why = margin_used(df)
    lines = [f"- skip margin at the last judgement: {ERROR.text(share)} of the limit ({why})"]
    now = skip_margin(r.dropna().to_dict() for _, r in df.iterrows())
    if abs(now.share - share) > 1e-9:
        lines.append(f"- the margin the study's evidence supports now: {ERROR.text(now.share)} ({now.why})")
    shown, likely, largest = false_skips(df, limit)
    if shown.empty and likely.empty:
        lines.append("- false skips: none shown (no skipped configuration later ran and fitted, and none was "
                     "predicted within the largest measured over-prediction of the limit)")
    else:
        parts = []
        if not shown.empty:
            parts.append(f"{len(shown)} later ran and fitted ({', '.join(label(r) for _, r in shown.iterrows())})")
        if not likely.empty:
            parts.append(f"{len(likely)} may have fitted ({', '.join(label(r) for _, r in likely.iterrows())}: "
                         f"predicted over the limit by less than the largest measured over-prediction, "
                         f"{ERROR.text(largest, sign=True)})")
        lines.append("- **false skips**: " + "; ".join(parts))
    return lines


def memory_section(df: pd.DataFrame, settings: dict[str, Any], label: Callable[[pd.Series], str]) -> list[str]:
    """summary.md's memory section: limit, calibration, skips, predicted vs measured per trial, median error."""
    failed = df["mem_trace_error"].dropna() if "mem_trace_error" in df else pd.Series(dtype=object)
    if "predicted_peak_bytes" not in df or df["predicted_peak_bytes"].isna().all():
        if failed.empty and not df.empty and study_limit(df) is None:  # every run records the limit it had
            return ["## Memory", "", "- no step was traced: without a limit (--memory-limit, or a GPU's memory) no "
                    "prediction could skip a configuration; --memory-limit traces each trial's step first (~1 s) "
                    "and skips what is predicted not to fit", ""]
        if failed.empty:
            return []
        return ["## Memory: predicted and measured", "", f"- no prediction: the step's trace failed in {len(failed)} "
                f"trial(s), e.g. {failed.iloc[0]} (the trial logs have the tracebacks)", ""]
    limit = study_limit(df)
    cal = Calibration.fit(calibration_points(r.to_dict() for _, r in df.iterrows()))
    skipped = df[df["status"] == Status.PREDICTED_OOM]
    oom = df[df["status"] == Status.OOM]
    ran = predicted_vs_measured(df)
    lines = ["## Memory: predicted and measured", ""]
    measure = ("bytes reserved by the CUDA caching allocator" if df["peak_reserved_bytes"].notna().any()
               else "the trial process's data segment, what the CPU's --memory-limit (RLIMIT_DATA) counts")
    lines.append(f"- measured peak: {measure}; predicted: the training step traced on fake tensors "
                 f"(gptcore.memtrace): what costs exactly what it holds (weights, AdamW state, tensors the "
                 f"allocator returns when freed) as it is, the other transient tensors x ratio, + overhead, plus "
                 f"the process's own baseline. Each trial was predicted before it "
                 f"ran, with the calibration fitted on the runs measured by then; fitted on all {cal.points} "
                 f"measured run(s): ratio {cal.ratio:.3f}, overhead {MIB.text(cal.overhead_bytes, True)}")
    if not failed.empty:
        lines.append(f"- the step's trace failed in {len(failed)} trial(s), which ran unpredicted: {failed.iloc[0]}")
    if limit is not None:
        predicting = settings.get("predict", True)
        skip_rule = ("skipped when predicted over it by more than the skip margin" if predicting
                     else "never skipped (--no-predict)")
        lines.append(f"- limit {MIB.text(limit, True)}; configurations {skip_rule}: {len(skipped)} skipped, "
                     f"{len(oom)} ran out of memory")
        if predicting:
            lines += _margin_lines(df, limit, label)
    if not ran.empty:
        errors = ran["error"].abs()
        lines.append(f"- prediction error |predicted - measured| / measured over {len(ran)} trial(s) that trained: "
                     f"median {ERROR.text(errors.median())}, 90th percentile {ERROR.text(errors.quantile(0.9))}, "
                     f"largest {ERROR.text(errors.max())}")
    seconds = df["mem_predict_seconds"].dropna()
    if not seconds.empty:
        budget = settings.get("budget_amount") if settings.get("budget_unit") == "s" else None
        share = f", {ERROR.text(seconds.median() / budget)} of the {budget:g} s target" if budget else ""
        lines.append(f"- tracing a trial's step took a median {SECONDS.text(seconds.median(), True)}{share} (largest "
                     f"{SECONDS.text(seconds.max(), True)})")
    lines.append("")
    if not ran.empty:
        table = pd.DataFrame({"trial": [label(r) for _, r in ran.iterrows()],
                              "batch x block": [f"{int(r.batch_size)} x {int(r.block_size)}" for r in ran.itertuples()],
                              "embed": ran["n_embed"].astype(int), "layers": ran["n_layer"].astype(int),
                              "predicted MiB": ran["predicted_peak_bytes"].map(MIB.text),
                              "measured MiB": ran["measured_peak_bytes"].map(MIB.text),
                              "error": ran["error"].map(lambda e: ERROR.text(e, sign=True))})
        lines += [markdown_table(table), ""]
    return lines


def memory_plot(df: pd.DataFrame, save: Callable[[Any, str], None]) -> str | None:
    """memory.png: measured against predicted peak, the limit, the skip boundary, OOMs and skips; a note if not
    drawn."""
    import matplotlib.pyplot as plt

    limit = study_limit(df)
    if "predicted_peak_bytes" not in df or df["predicted_peak_bytes"].isna().all():
        return "memory.png: not drawn (no trial has a memory prediction)"
    ran = predicted_vs_measured(df)
    oom = df[(df["status"] == Status.OOM) & df["predicted_peak_bytes"].notna()]
    skipped = df[df["status"] == Status.PREDICTED_OOM]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(ran["predicted_MiB"], ran["measured_MiB"], alpha=0.7, label=f"trained ({len(ran)})")
    top = max([v for v in (ran["predicted_MiB"].max(), ran["measured_MiB"].max(),
                           (df["predicted_peak_bytes"].max() or 0) / MiB, (limit or 0) / MiB * 1.3) if pd.notna(v)])
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="predicted = measured")
    if limit:
        y = limit / MiB
        ax.axhline(y, color="C3", linestyle="--", label="memory limit")
        share = margin_used(df)[0]
        ax.axvline(y * (1 + share), color="C1", linestyle=":", label=f"skip boundary (limit + {ERROR.text(share)})")
        if not oom.empty:
            ax.scatter(oom["predicted_peak_bytes"] / MiB, [y] * len(oom), marker="x", color="C3", s=60,
                       label=f"ran out of memory ({len(oom)})")
        if not skipped.empty:
            ax.scatter(skipped["predicted_peak_bytes"] / MiB, [y] * len(skipped), marker="o", facecolors="none",
                       edgecolors="C1", s=50, label=f"skipped: predicted OOM ({len(skipped)})")
    top *= 1.05
    # Nothing is measured above the limit (it is what stops a run): the y axis ends just past it, so the trials
    # that trained are not squeezed flat by far-over predictions on the x axis.
    # No run measured yet and no limit (an interrupted first trial): the x range, not an empty one.
    high = max([v for v in (ran["measured_MiB"].max(), (limit or 0) / MiB) if pd.notna(v)] or [top]) * 1.25 or top
    ax.set(xlabel="predicted peak (MiB)", ylabel="measured peak (MiB)", xlim=(0, top), ylim=(0, min(top, high)),
           title="Peak memory: predicted vs measured")
    ax.legend(fontsize=8)
    save(fig, "memory.png")
    return None
