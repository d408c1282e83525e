"""What a free worker runs next, decided under the study lock: every tuner on a study sees the same books.

The rules, for any number of tuner processes and workers on one study:
- a study ends when it holds `--trials` *counted* trials: ones whose outcome says something about their
  configuration (ok, pruned, oom, diverged, timeout; Optuna's COMPLETE and PRUNED). `error` and `interrupted`
  trials (Optuna's FAIL) stay in the tables but do not count;
- a trial whose tuner stopped beating (killed, frozen, cut off) is failed after the grace period, and a failed
  trial (stale, interrupted or error) is queued again once with the same parameters (Optuna's WAITING trial,
  with the `failed_trial` / `retry_history` system attributes of its RetryHeartbeatStaleTrialCallback);
- a worker takes a queued retry first, else a new trial while counted + running + queued < --trials, else
  waits for the running ones (one may fail and need a retry), else the study is done;
- reference presets are claimed once no searched trial is left to claim (the search first: the answer is what
  the user waits for, and a reference judged against it can be stopped at a rung);
- with --confirm K, a finished study (and its references) then re-runs its best configurations with fresh seeds,
  in a third study (`<name>:confirm`), claimed the same way: queued retries first, then the run the sequential
  rule names (the best once, more only while the runner-up may still be better by more than SETTLED; at most
  CONFIRM_RUNS each of the K best); a worker waits while any trial runs anywhere (a run may fail and need its retry).
Each decision (fail stale trials, count, ask) and each requeue happens inside one lock that spans every tuner
process (tune.store.locks.study_lock), so two tuners never ask for the same last trial or retry one trial twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gptcore.config import SEED_MAX
from tune.core.confirm import CONFIRM_RUNS, confirm_rule, next_confirmation, source_name
from tune.core.outcomes import Status
from tune.core.space import Space, preset_params
from tune.store import _optuna
from tune.store.told import COUNTED_STATES, tell_from_record

MAX_RETRIES = 1  # a configuration is tried at most twice: a crash every time cannot loop forever
WAIT, DONE = "wait", "done"


@dataclass(frozen=True)
class Source:
    """A configuration that trained to the target, as a confirmation run repeats it: a searched trial (its six
    values) or a reference preset (its own shape and schedule)."""

    number: int | None  # the searched trial's number in the study; None for a reference
    preset: str | None  # the reference preset; None for a searched trial
    params: dict[str, Any]  # the six values (a preset's own, for a reference)
    value: float | None = None  # its objective value at the target (None when looked up by name)

    @property
    def name(self) -> str:
        """What its confirmation runs record as `confirm_of`: 'trial 12' or 'ref baby'."""
        return source_name(self.number, self.preset)


@dataclass(frozen=True)
class Confirm:
    """What a confirmation run repeats (its source), which of the CONFIRM_RUNS it is, and the seed it trains with."""

    source: Source
    run: int
    seed: int


@dataclass
class Claim:
    """A trial this worker now owns (RUNNING in the storage): a searched configuration, a reference preset, or a
    confirmation run of one of them."""

    trial: optuna.Trial
    preset: str | None = None  # the reference preset, None for a searched trial
    retry_of: int | None = None  # the trial number this one retries
    params: dict[str, Any] | None = None  # a searched trial's six values, drawn in the claim
    confirm: Confirm | None = None  # a confirmation run: the configuration, run and seed it repeats

    @property
    def searched(self) -> bool:
        """A trial of the search itself: counted toward --trials, judged at the rungs, may be pruned."""
        return self.preset is None and self.confirm is None


def requeue(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a failed trial's configuration again (once): the storages' stale-trial callback, and our own."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_RETRIES:
        return
    # What the trial is: a reference preset, or a warm start (its source trial); the retry is the same thing.
    kept = {key: failed.user_attrs[key] for key in ("reference", "warm_start") if failed.user_attrs.get(key)}
    system_attrs = {"failed_trial": history[0], "retry_history": history}
    if "fixed_params" in failed.system_attrs:  # an enqueued trial that died before (or while) drawing its values
        system_attrs["fixed_params"] = failed.system_attrs["fixed_params"]
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
    return {"counted": sum(s in COUNTED_STATES for s in states), "running": states.count(TrialState.RUNNING),
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
    # A Trial has no public view of its system attributes: its frozen copy from the storage has.
    frozen = _optuna.storage_of(study).get_trial(_optuna.trial_id(trial))
    return Claim(trial, retry_of=retry_of(frozen))


def claim_reference(refs: optuna.Study, presets: tuple[str, ...]) -> Claim | None:
    """Under the study lock: a queued reference retry, else a preset that has never run; None when none is left.

    A preset whose run and retry both failed is given up (its rows say why).
    """
    trials = refs.get_trials(deepcopy=False)
    while any(t.state == TrialState.WAITING for t in trials):
        trial = refs.ask()
        frozen = _optuna.storage_of(refs).get_trial(_optuna.trial_id(trial))
        preset = frozen.user_attrs.get("reference")
        if preset:
            return Claim(trial, preset=preset, retry_of=retry_of(frozen))
        # A retry of a reference trial whose tuner died before it recorded its preset: nothing to run.
        _give_up(refs, trial, "a reference trial without its preset name (its tuner died at once)")
        trials = refs.get_trials(deepcopy=False)
    tried = {t.user_attrs.get("reference") for t in trials}
    for preset in presets:
        if preset not in tried:
            trial = refs.ask()
            _label(refs, trial, {"reference": preset})
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
    """Close every RUNNING trial: only for a storage this tuner holds alone (SQLite), where no live tuner can be
    running one. A trial whose record is complete is told from it (its tuner died after recording its end, before
    telling Optuna); the others are failed and queued again. Returns how many it failed."""
    closed, storage = 0, _optuna.storage_of(study)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if tell_from_record(study, frozen):
            continue
        trial_id = _optuna.trial_id(frozen)
        storage.set_trial_user_attr(trial_id, "status", Status.INTERRUPTED.value)
        storage.set_trial_user_attr(trial_id, "error", "the tuner process stopped during this trial")
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            requeue(study, storage.get_trial(trial_id))
            closed += 1
    return closed


def top_configurations(study: optuna.Study, refs: optuna.Study | None, k: int) -> list[Source]:
    """The k best configurations that trained to the target (searched trials and reference presets), best first."""
    found = [Source(t.number, None, Space.decode(t.params), t.value)
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if refs is not None:
        presets = {t.user_attrs.get("reference"): t.value
                   for t in refs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        found += [Source(None, p, preset_params(p), v) for p, v in presets.items() if p]
    sign = 1 if study.direction == StudyDirection.MINIMIZE else -1
    return sorted(found, key=lambda s: (sign * s.value, s.name))[:k]


def find_source(study: optuna.Study, name: str) -> Source | None:
    """The configuration a `confirm_of` names; None if the study does not hold it."""
    kind, _, rest = name.partition(" ")
    if kind == "ref" and rest:
        return Source(None, rest, preset_params(rest))
    if kind == "trial" and rest.isdigit():
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == int(rest)), None)
        if trial is not None and trial.params:
            return Source(trial.number, None, Space.decode(trial.params), trial.value)
    return None


def claim_confirm(study: optuna.Study, refs: optuna.Study | None, confirms: optuna.Study, k: int,
                  seed: int) -> Claim | str:
    """Under the study lock, once the study holds its --trials: a queued confirmation retry, else the run
    next_confirm_run names (run r trains with seed + r); WAIT while a trial runs anywhere, else DONE.

    The top k are only judged when nothing runs in the study or its references (a running trial may still join
    them); a running confirmation run may fail and need its retry, so a free worker waits for it too.
    """
    if any(s is not None and s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for s in (study, refs)):
        return WAIT
    trials = confirms.get_trials(deepcopy=False)
    while any(t.state == TrialState.WAITING for t in trials):
        trial = confirms.ask()  # pops the oldest queued retry
        number = retry_of(_optuna.storage_of(confirms).get_trial(_optuna.trial_id(trial)))
        failed = next((t for t in trials if t.number == number), None)
        attrs = failed.user_attrs if failed is not None else {}
        source = find_source(study, attrs["confirm_of"]) if attrs.get("confirm_of") else None
        if source is not None and attrs.get("confirm_run") and attrs.get("confirm_seed") is not None:
            return _confirm_claim(confirms, trial, Confirm(source, attrs["confirm_run"], attrs["confirm_seed"]),
                                  number)
        # A retry of a run whose tuner died before it recorded what it repeats: nothing to run here (that run is
        # claimed afresh below, as one never tried).
        _give_up(confirms, trial, "a confirmation run without its configuration (its tuner died at once)")
        trials = confirms.get_trials(deepcopy=False)
    nxt = next_confirm_run(study, refs, confirms, k)
    if nxt is not None:
        source, run = nxt
        return _confirm_claim(confirms, confirms.ask(), Confirm(source, run, (seed + run) % (SEED_MAX + 1)))
    return WAIT if any(t.state == TrialState.RUNNING for t in trials) else DONE


def next_confirm_run(study: optuna.Study, refs: optuna.Study | None, confirms: optuna.Study,
                     k: int) -> tuple[Source, int] | None:
    """The confirmation run to make next, (configuration, run number), or None: the answer is settled.

    With --confirm-rule sequential, on the loss (tune.core.confirm.next_confirmation): the best configuration once,
    then more runs only while the next may still be better by more than SETTLED on average (the noise measured
    so far), at most CONFIRM_RUNS each of the k best. Otherwise (rule all, or another objective: no prior for its
    noise) every one of those.
    """
    top = top_configurations(study, refs, k)
    trials = confirms.get_trials(deepcopy=False)
    claimed = _claimed(trials)
    if confirm_rule(study.user_attrs.get("settings", {})) != "sequential":
        return next(((s, r) for s in top for r in range(1, CONFIRM_RUNS + 1) if (s.name, r) not in claimed), None)
    done: dict[str, list[float]] = {s.name: [s.value] for s in top}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get("confirm_of") in done and t.value is not None:
            done[t.user_attrs["confirm_of"]].append(t.value)
    made = {s.name: sum((s.name, r) in claimed for r in range(1, CONFIRM_RUNS + 1)) for s in top}
    pick = next_confirmation(done, made, CONFIRM_RUNS)
    if pick is None:
        return None
    source = next(s for s in top if s.name == pick)
    return source, next(r for r in range(1, CONFIRM_RUNS + 1) if (pick, r) not in claimed)


def _confirm_claim(confirms: optuna.Study, trial: optuna.Trial, confirm: Confirm, retry: int | None = None) -> Claim:
    """Record on a new confirmation trial what it repeats (inside the lock: no other tuner can claim that run)."""
    _label(confirms, trial, {"confirm_of": confirm.source.name, "confirm_run": confirm.run,
                             "confirm_seed": confirm.seed})
    return Claim(trial, preset=confirm.source.preset, retry_of=retry, params=confirm.source.params, confirm=confirm)


def confirm_runs_pending(study: optuna.Study, refs: optuna.Study | None, confirms: optuna.Study | None,
                         k: int) -> int:
    """Confirmation runs still to train at most, for the plan printed at the start: those the top k as they stand
    lack (k x CONFIRM_RUNS before any configuration has trained to the target), plus queued retries; sequential
    confirmation stops sooner once the answer is settled."""
    if confirms is None or k <= 0:
        return 0
    trials = confirms.get_trials(deepcopy=False)
    claimed = _claimed(trials)
    top = top_configurations(study, refs, k)
    missing = sum((s.name, run) not in claimed for s in top for run in range(1, CONFIRM_RUNS + 1))
    queued = sum(t.state == TrialState.WAITING for t in trials)
    return missing + (k - len(top)) * CONFIRM_RUNS + queued


def _label(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Record what a just-claimed trial is (inside the lock: no other tuner can claim the same); if that fails the
    trial is closed (FAIL), never left RUNNING without a name."""
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise


def _give_up(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
    """Close a popped retry that has nothing to run: its failed attempt died before it recorded what it was."""
    trial.set_user_attr("status", Status.ERROR.value)
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)


def _claimed(trials: list[FrozenTrial]) -> set[tuple[Any, Any]]:
    """(configuration, run) of every confirmation run claimed so far, whatever its end."""
    return {(t.user_attrs.get("confirm_of"), t.user_attrs.get("confirm_run")) for t in trials}
