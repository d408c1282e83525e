"""The study's memory judgement: the limit a trial must fit, the calibration learnt from the trials that ran, the
decision to skip a configuration predicted not to fit, and the constraint each trial tells Optuna.

The prediction itself is the traced step (gptcore.memtrace, run in the trial process before it trains); the
parent only turns it into device bytes (gptcore.memory.Calibration) and decides. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from gptcore.errors import UserError
from gptcore.memory import Calibration
from tune.core.outcomes import MEASURED, Status
from tune.core.units import GIB, MIB, MiB

# Skip only a configuration predicted over the limit by more than a share of it: near the frontier, a run settles
# what the prediction cannot (a false skip loses a configuration for good; a run costs one trial). The share is
# the study's own evidence (skip_margin): the largest over-prediction among its measured runs, so that whatever
# may fit runs and what cannot is not run to run out of memory. Before MIN_EVIDENCE runs: this constant.
SKIP_MARGIN = 0.10
MIN_EVIDENCE = 3
# The evidence's margin stays within these: a measure a hair over its prediction is noise (the floor); a
# calibration far off (the ceiling) is no reason to run configurations many times the limit.
MARGIN_RANGE = (0.01, 0.50)
# On CUDA without --memory-limit the allocator's reserved bytes must fit the card beside the CUDA context and
# cuBLAS workspaces, which the allocator does not count.
CUDA_CONTEXT_BYTES = 512 * MiB
CALIBRATION_ATTR = "memory_calibration"


def limit_for(memory_limit: int | None, env: dict[str, Any]) -> int | None:
    """The bytes a trial may hold: --memory-limit, else a GPU's memory less the context; None: no limit (a CPU
    without --memory-limit)."""
    if memory_limit is not None:
        return memory_limit
    if env.get("device_type") == "cuda" and env.get("gpu_memory_bytes"):
        return env["gpu_memory_bytes"] - CUDA_CONTEXT_BYTES
    return None


def calibration_points(records: Iterable[dict[str, Any]]) -> list[tuple[int, int]]:
    """Calibration.fit's points: (traced bytes less the exact ones, measured bytes beyond the baseline and the
    exact ones) of every trial record that trained with a prediction."""
    points = []
    for a in records:
        if a.get("status") not in MEASURED:
            continue
        traced, measured, base = a.get("mem_traced_bytes"), a.get("measured_peak_bytes"), a.get("mem_baseline_bytes")
        if _known(traced) and _known(measured) and _known(base):
            exact = Calibration.exact({k: a.get(f"mem_{k}") if _known(a.get(f"mem_{k}")) else 0
                                       for k in ("resident_bytes", "large_bytes")})
            points.append((int(traced) - exact, int(measured) - int(base) - exact))
    return points


def _known(value: Any) -> bool:
    return value is not None and value == value  # not None, not NaN (a table's missing figure)


def calibrate(studies: Iterable[optuna.Study | None]) -> Calibration:
    """Fit the calibration on every measured run of the study, its references and its confirmation runs."""
    records = [t.user_attrs for study in studies if study is not None
               for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
    return Calibration.fit(calibration_points(records))


@dataclass(frozen=True)
class Margin:
    """How far over the limit a prediction may be and still run, and why that far."""

    share: float  # of the limit
    why: str


DEFAULT_MARGIN = Margin(SKIP_MARGIN, f"the default {SKIP_MARGIN:.0%}: fewer than {MIN_EVIDENCE} measured runs "
                                     f"with a prediction to learn from")


def over_predictions(records: Iterable[dict[str, Any]]) -> list[float]:
    """(predicted - measured) / measured of every record that trained with a prediction: > 0 where the
    prediction said more than the run held."""
    out = []
    for a in records:
        predicted, measured = a.get("predicted_peak_bytes"), a.get("measured_peak_bytes")
        if a.get("status") in MEASURED and _known(predicted) and _known(measured) and measured > 0:
            out.append((predicted - measured) / measured)
    return out


def skip_margin(records: Iterable[dict[str, Any]]) -> Margin:
    """The skip margin the study's evidence supports: its largest over-prediction (within MARGIN_RANGE), once
    MIN_EVIDENCE runs measured what was predicted; DEFAULT_MARGIN before."""
    errors = over_predictions(records)
    if len(errors) < MIN_EVIDENCE:
        return Margin(SKIP_MARGIN, f"the default {SKIP_MARGIN:.0%}: {len(errors)} measured run(s) with a "
                                   f"prediction, fewer than {MIN_EVIDENCE} to learn from")
    low, high = MARGIN_RANGE
    largest = max(errors)
    share = min(high, max(low, largest))
    bound = "" if share == largest else f", kept within {low:.0%}..{high:.0%}"
    return Margin(share, f"the largest over-prediction among {len(errors)} measured runs ({largest:+.1%}"
                         f"{bound}): a configuration predicted over the limit by less may fit")


def margin_of(studies: Iterable[optuna.Study | None]) -> Margin:
    """skip_margin over every run of the study, its references and its confirmation runs."""
    return skip_margin(t.user_attrs for study in studies if study is not None
                       for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL)


@dataclass(frozen=True)
class Verdict:
    """What the parent made of a trial's traced step."""

    predicted_bytes: int | None  # device bytes, calibrated (None: no trace)
    skip: bool
    margin: Margin = DEFAULT_MARGIN  # the margin it was judged with

    @staticmethod
    def judge(memory: dict[str, Any] | None, calibration: Calibration, limit: int | None, skip: bool,
              margin: Margin = DEFAULT_MARGIN) -> Verdict:
        """Predict device bytes; skip (when `skip` is allowed) only past the limit plus the margin (margin_of the
        study: its evidence, else SKIP_MARGIN)."""
        if not memory or memory.get("peak_bytes") is None:  # no trace, or a failed one: run it
            return Verdict(None, False, margin)
        predicted = calibration.predict(memory["peak_bytes"], memory.get("baseline_bytes", 0),
                                        Calibration.exact(memory))
        over = limit is not None and predicted > limit * (1 + margin.share)
        return Verdict(predicted, skip and over, margin)


def record_fields(memory: dict[str, Any] | None, verdict: Verdict | None, calibration: Calibration | None,
                  limit: int | None) -> dict[str, Any]:
    """The memory figures a trial's record keeps (tune.exec.record writes them as user attributes)."""
    memory = memory or {}
    return {"mem_traced_bytes": memory.get("peak_bytes"), "mem_baseline_bytes": memory.get("baseline_bytes"),
            "mem_resident_bytes": memory.get("resident_bytes"), "mem_large_bytes": memory.get("large_bytes"),
            "mem_trace_error": memory.get("error"),
            "mem_predict_seconds": memory.get("seconds"),
            "predicted_peak_bytes": verdict.predicted_bytes if verdict else None,
            "mem_ratio": calibration.ratio if verdict and verdict.predicted_bytes else None,
            "mem_overhead_bytes": calibration.overhead_bytes if verdict and verdict.predicted_bytes else None,
            "mem_limit_bytes": limit,
            "mem_skip_margin": verdict.margin.share if verdict and limit is not None else None,
            "mem_skip_margin_why": verdict.margin.why if verdict and limit is not None else None}


def violation_mib(status: str, attrs: dict[str, Any], limit: int | None) -> float | None:
    """The memory constraint told to Optuna (feasible when <= 0), in MiB: how far over the limit a trial was.

    Predicted OOM: its predicted excess. OOM: at least the allocation that failed (and the predicted excess, if
    larger). A trial that trained: its measured peak less the limit, never above 0 (it fitted: a measure a hair
    over the limit is the measure's error, not an excess). None without a limit or a figure.
    """
    if limit is None:
        return None
    predicted = attrs.get("predicted_peak_bytes")
    if status == Status.PREDICTED_OOM and predicted is not None:
        return (predicted - limit) / MiB
    if status == Status.OOM:
        over = max(attrs.get("oom_requested_bytes") or MiB, (predicted or 0) - limit)
        return over / MiB
    measured = attrs.get("measured_peak_bytes")
    if status in MEASURED and measured is not None:
        return min(0.0, (measured - limit) / MiB)
    return None


def check_memory_limit(limit: int | None, env: dict[str, Any]) -> None:
    """A limit must leave room for training (CPU) and fit the card (CUDA)."""
    if limit is None:
        return
    if env["device_type"] == "cpu" and limit <= env["vm_data_bytes"] + 64 * MiB:
        raise UserError(f"--memory-limit {MIB.text(limit, True)} is below what a trial process needs before "
                        f"training ({MIB.text(env['vm_data_bytes'], True)} + 64 MiB)")
    if env["device_type"] == "cuda" and limit > env["gpu_memory_bytes"]:
        raise UserError(f"--memory-limit is above the GPU's {GIB.text(env['gpu_memory_bytes'], True)}")
