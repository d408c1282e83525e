"""Can a trial's figures be trusted? The parent's judgement of what a trial measured (tune.exec.health): CPU
contention, GPU neighbours, too few steps, evaluation share.

A trial that ran beside another busy process is slower, and with a time budget it also learns less: without a
record of it, a contended trial looks like a slow configuration. Pure functions of the record: standard library
only.
"""

from __future__ import annotations

from typing import Any

MIN_TIMED_STEPS = 50  # fewer timed steps than this: the budget is too short for the loss to say much
MAX_EVAL_SHARE = 0.25  # evaluation above this share of a trial's training + evaluation time: budget too short
# A trial is contended when other processes used more CPU than the cores its threads leave free (plus slack for
# the tuner's own bookkeeping), or when it got less than this share of the CPU time its threads could use.
SPARE_CORES_SLACK = 0.25
MIN_CPU_SHARE = 0.5


def contention(measure: dict[str, Any], device_type: str) -> str | None:
    """Why this trial's timing cannot be trusted, in words; None when it ran alone as far as we can tell."""
    reasons = []
    if device_type == "cuda" and (measure.get("gpu_other_processes") or 0) > 0:
        reasons.append(f"{measure['gpu_other_processes']} other process(es) on its GPU")
    others, cores, threads = measure.get("others_cores"), measure.get("cores"), measure.get("threads")
    share = measure.get("cpu_share")
    if isinstance(cores, list):  # the cores it ran on (older records: how many)
        cores = len(cores)
    if others is not None and cores and threads:
        # Owned (pinned) cores: others_cores is what other processes took from them, and every one of them has a
        # thread of this trial, so no spare; machine-wide, the cores its threads leave free absorb neighbours.
        # On a GPU the host only launches kernels: the trial needs the cores it kept busy (at least one), not one
        # per intra-op thread, so a neighbour on the other 15 of 16 owned cores does not slow it.
        demand = threads
        if device_type != "cpu" and share is not None:
            demand = min(threads, max(1.0, share * threads))
        spare = max(cores - demand, 0)
        if others > spare + SPARE_CORES_SLACK:
            where = f"its {cores} own core(s)" if measure.get("cores_owned") else f"{cores} cores"
            reasons.append(f"other processes kept {others:.1f} of {where} busy")
    if device_type == "cpu" and share is not None and share < MIN_CPU_SHARE:
        reasons.append(f"it got {share:.0%} of the CPU time its {threads} thread(s) could use")
    return "; ".join(reasons) or None


def budget_warnings(timed_steps: int | None, eval_share: float | None) -> list[str]:
    """The budget was too short for this trial to say much."""
    out = []
    if timed_steps is not None and timed_steps < MIN_TIMED_STEPS:
        out.append(f"only {timed_steps} timed steps (< {MIN_TIMED_STEPS})")
    if eval_share is not None and eval_share > MAX_EVAL_SHARE:
        out.append(f"evaluation took {eval_share:.0%} of its time (> {MAX_EVAL_SHARE:.0%})")
    return out


def study_warnings(attrs_by_trial: dict[Any, dict[str, Any]]) -> list[str]:
    """Study-wide warnings from the trials' records: contended trials, budgets too short (console and summary)."""
    contended = [n for n, a in attrs_by_trial.items() if a.get("contended")]
    short = [n for n, a in attrs_by_trial.items() if a.get("budget_warning")]
    out = []
    if contended:
        out.append(f"{len(contended)} of {len(attrs_by_trial)} trials ran while other processes competed for the "
                   f"device (trials {_numbers(contended)}): their tokens/s understate the configuration and, with a "
                   f"time budget, so does their loss. Re-run the study on a quiet machine.")
    if short:
        out.append(f"{len(short)} trials had a budget too short to say much (trials {_numbers(short)}: fewer than "
                   f"{MIN_TIMED_STEPS} timed steps, or evaluation above {MAX_EVAL_SHARE:.0%} of their time). "
                   f"Raise --budget (or lower --rungs).")
    return out


def _numbers(numbers: list[Any], shown: int = 12) -> str:
    text = ", ".join(map(str, numbers[:shown]))
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")
