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
from tune.memory.judge import SKIP_MARGIN, MiB, calibration_points


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


def memory_section(df: pd.DataFrame, settings: dict[str, Any], label: Callable[[pd.Series], str]) -> list[str]:
    """summary.md's memory section: limit, calibration, skips, predicted vs measured per trial, median error."""
    failed = df["mem_trace_error"].dropna() if "mem_trace_error" in df else pd.Series(dtype=object)
    if "predicted_peak_bytes" not in df or df["predicted_peak_bytes"].isna().all():
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
                 f"measured run(s): ratio {cal.ratio:.3f}, overhead {cal.overhead_bytes / MiB:,.0f} MiB")
    if not failed.empty:
        lines.append(f"- the step's trace failed in {len(failed)} trial(s), which ran unpredicted: {failed.iloc[0]}")
    if limit is not None:
        skip_rule = ("skipped when predicted over it by more than "
                     f"{SKIP_MARGIN:.0%}" if settings.get("predict", True) else "never skipped (--no-predict)")
        lines.append(f"- limit {limit / MiB:,.0f} MiB; configurations {skip_rule}: {len(skipped)} skipped, "
                     f"{len(oom)} ran out of memory")
    if not ran.empty:
        errors = ran["error"].abs()
        lines.append(f"- prediction error |predicted - measured| / measured over {len(ran)} trial(s) that trained: "
                     f"median {errors.median():.1%}, 90th percentile {errors.quantile(0.9):.1%}, largest "
                     f"{errors.max():.1%}")
    seconds = df["mem_predict_seconds"].dropna()
    if not seconds.empty:
        budget = settings.get("budget_amount") if settings.get("budget_unit") == "s" else None
        share = f", {seconds.median() / budget:.1%} of the {budget:g} s target" if budget else ""
        lines.append(f"- tracing a trial's step took a median {seconds.median():.2f} s{share} (largest "
                     f"{seconds.max():.2f} s)")
    lines.append("")
    if not ran.empty:
        table = pd.DataFrame({"trial": [label(r) for _, r in ran.iterrows()],
                              "batch x block": [f"{int(r.batch_size)} x {int(r.block_size)}" for r in ran.itertuples()],
                              "embed": ran["n_embed"].astype(int), "layers": ran["n_layer"].astype(int),
                              "predicted MiB": ran["predicted_MiB"].round(0).astype(int),
                              "measured MiB": ran["measured_MiB"].round(0).astype(int),
                              "error": ran["error"].map(lambda e: f"{e:+.1%}")})
        lines += [table.to_markdown(index=False), ""]
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
        ax.axvline(y * (1 + SKIP_MARGIN), color="C1", linestyle=":",
                   label=f"skip boundary (limit + {SKIP_MARGIN:.0%})")
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
