"""What a free worker runs next, decided under the study lock: every tuner on a study sees the same books.

The rules, for any number of tuner processes and workers on one study:
- a study ends when it holds `--trials` *counted* trials: ones whose outcome says something about their
  configuration (ok, pruned, oom, diverged, timeout; Optuna's COMPLETE and PRUNED). `error` and `interrupted`
  trials (Optuna's FAIL) stay in the tables but do not count;
- a trial whose tuner stopped beating (killed, frozen, cut off) is failed after the grace period, and a failed
  trial (stale, interrupted or error) is queued again once with the same parameters (Optuna's WAITING trial,
  with the `failed_trial` / `retry_history` system attributes of its RetryHeartbeatStaleTrialCallback);
- a worker takes a queued retry first, else a new trial while counted + running + queued < --trials, else
  waits for the running ones (one may fail and need a retry), else the study is done.
Each decision (fail stale trials, count, ask) and each requeue happens inside one lock that spans every tuner
process (tune.storage.study_lock), so two tuners never ask for the same last trial or retry one trial twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

MAX_RETRIES = 1  # a configuration is tried at most twice: a crash every time cannot loop forever
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT, DONE = "wait", "done"


@dataclass
class Claim:
    """A trial this worker now owns (RUNNING in the storage): a searched configuration or a reference preset."""

    trial: optuna.Trial
    preset: str | None = None  # the reference preset, None for a searched trial
    retry_of: int | None = None  # the trial number this one retries
    params: dict[str, Any] | None = None  # a searched trial's six values, drawn in the claim


def requeue(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a failed trial's configuration again (once): the storages' stale-trial callback, and our own."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_RETRIES:
        return
    # What the trial is: a reference preset, or a warm start (its source trial); the retry is the same thing.
    kept = {key: failed.user_attrs[key] for key in ("reference", "warm_start") if failed.user_attrs.get(key)}
    system_attrs = {"failed_trial": history[0], "retry_history": history}
    if not failed.params and "fixed_params" in failed.system_attrs:
        system_attrs["fixed_params"] = failed.system_attrs["fixed_params"]  # an enqueued trial that died undrawn
    distributions: dict[str, BaseDistribution] = failed.distributions
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=distributions, user_attrs=kept,
        system_attrs=system_attrs))


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial number a trial retries (the last failure before it), None for a first attempt."""
    history = trial.system_attrs.get("retry_history") or []
    return history[-1] if history else None


def tally(study: optuna.Study) -> dict[str, int]:
    """counted, running and queued trials of a study."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"counted": sum(s in COUNTED for s in states), "running": states.count(TrialState.RUNNING),
            "queued": states.count(TrialState.WAITING)}


def claim_trial(study: optuna.Study, target: int) -> Claim | str:
    """Under the study lock: a queued retry, a new trial, WAIT (others are running the last ones) or DONE."""
    n = tally(study)
    if n["counted"] >= target:
        return DONE
    if n["queued"]:
        trial = study.ask()  # pops the oldest queued trial: a retry, with its parameters
    elif n["counted"] + n["running"] < target:
        trial = study.ask()
    else:
        return WAIT
    frozen = study._storage.get_trial(trial._trial_id)  # Trial has no public view of its system attributes
    return Claim(trial, retry_of=retry_of(frozen))


def claim_reference(refs: optuna.Study, presets: tuple[str, ...]) -> Claim | None:
    """Under the study lock: a queued reference retry, else a preset that has never run; None when none is left.

    A preset whose run and retry both failed is given up (its rows say why).
    """
    trials = refs.get_trials(deepcopy=False)
    while any(t.state == TrialState.WAITING for t in trials):
        trial = refs.ask()
        frozen = refs._storage.get_trial(trial._trial_id)
        preset = frozen.user_attrs.get("reference")
        if preset:
            return Claim(trial, preset=preset, retry_of=retry_of(frozen))
        # A retry of a reference trial whose tuner died before it recorded its preset: nothing to run.
        trial.set_user_attr("status", "error")
        trial.set_user_attr("error", "a reference trial without its preset name (its tuner died at once)")
        refs.tell(trial, state=TrialState.FAIL)
        trials = refs.get_trials(deepcopy=False)
    tried = {t.user_attrs.get("reference") for t in trials}
    for preset in presets:
        if preset not in tried:
            trial = refs.ask()
            try:
                trial.set_user_attr("reference", preset)  # inside the lock: no other tuner can claim it meanwhile
            except BaseException:
                refs.tell(trial, state=TrialState.FAIL)
                raise
            return Claim(trial, preset=preset)
    return None


def references_pending(refs: optuna.Study | None, presets: tuple[str, ...]) -> list[str]:
    """Presets still to run (never tried, or queued for a retry), for the plan printed at the start."""
    if refs is None:
        return []
    trials = refs.get_trials(deepcopy=False)
    queued = [t.user_attrs.get("reference") for t in trials if t.state == TrialState.WAITING]
    tried = {t.user_attrs.get("reference") for t in trials}
    return [p for p in presets if p not in tried or p in queued]


def fail_orphans(study: optuna.Study) -> int:
    """Fail (and queue again) every RUNNING trial: only for a storage this tuner holds alone (SQLite), where no
    live tuner can be running one. Returns how many it closed."""
    closed, storage = 0, study._storage
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(frozen._trial_id, "status", "interrupted")
        storage.set_trial_user_attr(frozen._trial_id, "error", "the tuner process stopped during this trial")
        if storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
            requeue(study, storage.get_trial(frozen._trial_id))
            closed += 1
    return closed
