"""One trial's figures as Optuna user attributes (the one record every table, summary and plot reads)."""

from __future__ import annotations

import math
import os
from typing import Any

import optuna

from tune.core import trust
from tune.core.outcomes import Status
from tune.exec.runner import TrialRun


def current_rss_bytes() -> int | None:
    """This (parent) process's resident memory now, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def measured_peak(peak_memory: dict[str, int]) -> int | None:
    """The peak that a memory limit counts, and the one predictions are judged against: on CUDA the bytes the
    caching allocator reserved (what set_per_process_memory_fraction limits), on the CPU the data segment (what
    RLIMIT_DATA limits); the peak RSS where neither is known."""
    for key in ("peak_reserved_bytes", "peak_data_bytes", "peak_rss_bytes"):
        if peak_memory.get(key) is not None:
            return int(peak_memory[key])
    return None


def figures(run: TrialRun, params: dict[str, Any], env: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Every per-trial figure of the record (the results table is built from these), JSON-safe."""
    attrs: dict[str, Any] = {"status": run.status.value, **params, **extra, "device": env["device_name"],
                             "parent_rss_bytes": current_rss_bytes(),
                             "trial_seconds": run.trial_seconds, "startup_seconds": run.startup_seconds,
                             "error": run.message, "oom_phase": run.phase if run.status == Status.OOM else None,
                             "oom_requested_bytes": run.requested_bytes}
    attrs.update(_usage(run, env))
    attrs.update(_trained(run))
    # JSON storage has no NaN
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in attrs.items()}


def record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Write the record as the trial's user attributes, its status last: a record with a status is complete, so a
    tuner killed before it told Optuna leaves a result the next one can tell (tune.store.told)."""
    for key, value in attrs.items():
        if key != "status":
            trial.set_user_attr(key, value)
    trial.set_user_attr("status", attrs["status"])


def _usage(run: TrialRun, env: dict[str, Any]) -> dict[str, Any]:
    """What share of the machine the trial got, and whether others competed for it."""
    m = run.measure
    # A trial that failed before it trained (a set-up error, an OOM building the model) ran too briefly for its
    # share of the CPU to mean anything: it is not judged.
    trained = run.result is not None or bool(run.evals)
    return dict(cpu_share=m.get("cpu_share"), others_cores=m.get("others_cores"), load_1m=m.get("load_1m"),
                threads=m.get("threads"), gpu_other_processes=m.get("gpu_other_processes"),
                gpu_util_percent=m.get("gpu_util_percent"), gpu_uuid=m.get("gpu_uuid"),
                contended=trust.contention(m, env["device_type"]) if trained else None)


def _trained(run: TrialRun) -> dict[str, Any]:
    """The training's figures: all of them from a run that reported its end, else the last losses seen."""
    r, attrs = run.result, {}
    warnings: list[str] = []
    if r is not None:
        mem = r["peak_memory"]
        timed_steps = r["steps"] - r["warmup_steps"]
        compile_s = r.get("compile_seconds") or 0.0  # absent from results written before compile modes
        busy = r["train_seconds"] + r["warmup_seconds"] + compile_s + r["eval_seconds"]
        eval_share = r["eval_seconds"] / busy if busy > 0 else None
        attrs.update(val_loss=r["val_loss"], train_loss=r["train_loss"], steps=r["steps"], tokens=r["tokens"],
                     tokens_per_s=r["tokens_per_s"], train_seconds=r["train_seconds"],
                     eval_seconds=r["eval_seconds"], warmup_steps=r["warmup_steps"],
                     warmup_seconds=r["warmup_seconds"], compile_seconds=compile_s, eval_share=eval_share,
                     compile=f"{r['compile']}: {r['compile_reason']}" if r.get("compile") else None,
                     peak_allocated_bytes=mem.get("peak_allocated_bytes"),
                     peak_reserved_bytes=mem.get("peak_reserved_bytes"), peak_rss_bytes=mem.get("peak_rss_bytes"),
                     peak_data_bytes=mem.get("peak_data_bytes"), measured_peak_bytes=measured_peak(mem),
                     n_params=r["n_params"], mfu=r["mfu"])
        # A pruned trial stopped early on purpose: its step count says nothing about the budget.
        warnings = trust.budget_warnings(timed_steps if run.status == Status.OK else None, eval_share)
    elif run.evals:  # failed after some evaluations: keep the last losses seen
        _, step, train_loss, val_loss = run.evals[-1]
        attrs.update(val_loss=val_loss, train_loss=train_loss, steps=step)
    if run.evals:  # the loss at the last rung reached: what a pruned trial was judged on
        attrs["rung_loss"] = run.evals[-1][3] if r is None or run.status != Status.OK else r["val_loss"]
    attrs["budget_warning"] = "; ".join(warnings) or None
    return attrs


def describe_run(label: str, run: TrialRun, attrs: dict[str, Any]) -> tuple[str, list[str]]:
    """One line per finished trial (from its record), and the warnings when its figures are not to be trusted."""
    a = attrs
    cfg = (f"batch {a['batch_size']} block {a['block_size']} embed {a['n_embed']} heads {a['n_head']} "
           f"layers {a['n_layer']} lr {a['learning_rate']:.2e}")
    r = run.result
    if r is not None:
        mem = f"{measured_peak(r['peak_memory']) / 2**20:,.0f} MiB"
        if a.get("predicted_peak_bytes"):
            mem += f" (predicted {a['predicted_peak_bytes'] / 2**20:,.0f})"
        figures = (f"val {r['val_loss']:.4f} at rung {a.get('rung')}/{a.get('rungs')} | "
                   f"{r['tokens_per_s']:,.0f} tok/s | {mem} | {r['steps']} steps")
    else:
        figures = run.message or ""
    line = f"{label} {run.status:<8} {figures} | {cfg} | {run.trial_seconds:.1f} s"
    notes = [f"contended: {a['contended']}" if a.get("contended") else None, a.get("budget_warning")]
    return line, [note for note in notes if note]
