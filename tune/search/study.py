"""The study: workers claim a configuration, train it towards the target budget in its own process, judged at
rungs on the way (only the best 1/eta train on), and tell Optuna how it went. Reference presets run the same path.

Every trial trains with the schedule of the full run (max_seconds or max_iters = the target, the learning rate
decaying to the target), so a trial judged at a rung is on the path the full run takes; a promoted trial simply
trains on. The parent owns the storage and never imports torch; each trial is a child process (tune.exec.runner) that
owns one worker slot (tune.exec.slots). What runs next is decided under the study lock (tune.search.dispatch), so
any number of tuner processes can share a study.
With --confirm K, the K best configurations then train again with fresh seeds (a third study, never pruned) and
the report picks the winner by the mean of its runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tune.core import trust
from tune.core.confirm import confirm_label
from tune.core.space import preset_params
from tune.exec.console import Console
from tune.exec.pool import Beater, run_workers
from tune.exec.record import describe_run, record
from tune.exec.runner import TrialRun, TrialRunner
from tune.exec.slots import Slot
from tune.memory import judge as mem
from tune.search import dispatch
from tune.search.dispatch import DONE, WAIT, Claim
from tune.search.session import (
    Session,
    StudyOutcome,
    full_disk,
    open_session,
    plan_message,
    reference_configs,
    trial_configs,
    warn_if_busy,
)
from tune.search.settings import TuneSettings
from tune.store import liveness
from tune.store.storage import scrub

STATE_OF = {
    "ok": TrialState.COMPLETE,
    # Pruned, OOM, diverged and timed-out trials are all told as PRUNED. TPE ranks pruned trials by how far they
    # got (the last rung reported) and then by their loss there, and one with no report (an OOM before the first
    # rung) below every other: the sampler learns to avoid the region. FAIL would hide the trial from the
    # sampler, which would keep proposing configurations that do not fit.
    "pruned": TrialState.PRUNED,
    "oom": TrialState.PRUNED,
    # Predicted not to fit, never run: PRUNED with no report, and infeasible by its memory constraint (see
    # tune.memory.judge.violation_mib), which TPE ranks below every feasible trial, the least excess first.
    "predicted_oom": TrialState.PRUNED,
    "diverged": TrialState.PRUNED,
    "timeout": TrialState.PRUNED,
    # An unexplained error or an interruption says nothing about the configuration: kept out of the sampler's
    # model, not counted toward --trials, and queued again once (tune.search.dispatch).
    "error": TrialState.FAIL,
    "interrupted": TrialState.FAIL,
}
# This many errors in a row (not OOM, not divergence: crashes) mean the set-up is broken, not the configurations:
# the tuner stops instead of sampling forever.
MAX_ERRORS_IN_A_ROW = 3
HOST = socket.gethostname()


class TrialLost(Exception):
    """Another tuner failed this trial as stale (this one missed its heartbeats): its result cannot be told."""


@dataclass
class Tuner:
    """One tuner process's shared state: its workers, the heartbeat, the stop event, the console."""

    session: Session
    runner: TrialRunner
    target: str | None  # tests swap in a misbehaving stand-in for gptcore.train.train
    say: Callable[[str], None]  # a warning, an error: always printed
    trial_line: Callable[[str, list[str]], None]  # a finished trial's line and its warnings (Console.trial)
    bar: Any
    beater: Beater
    stop: threading.Event = field(default_factory=threading.Event)  # Ctrl-C: end the running trials now
    drain: threading.Event = field(default_factory=threading.Event)  # the brake: claim nothing new, finish the rest
    counts: dict[str, int] = field(default_factory=dict)
    ran: int = 0
    errors_in_a_row: int = 0
    stopped_because: str | None = None
    _books: threading.Lock = field(default_factory=threading.Lock)

    @property
    def poll_seconds(self) -> float:
        """How often a waiting worker looks again (for stale trials, or the study's end)."""
        return min(5.0, self.session.settings.heartbeat_interval)

    def tell(self, trial: optuna.Trial, status: str, value: float | None = None) -> None:
        """Tell Optuna how a trial ended; a failure is queued again in the same locked step (never twice)."""
        study = trial.study
        try:
            if STATE_OF[status] == TrialState.FAIL:
                with self.session.lock:
                    study.tell(trial, state=TrialState.FAIL)
                    dispatch.requeue(study, study._storage.get_trial(trial._trial_id))
            elif value is not None:
                study.tell(trial, value)
            else:
                study.tell(trial, state=STATE_OF[status])
        except (UpdateFinishedTrialError, ValueError):
            # Optuna 5 refuses to tell a finished trial with ValueError ("Cannot tell a FAIL trial"): another
            # tuner failed it as stale. Any other ValueError is ours and must surface.
            if study._storage.get_trial(trial._trial_id).state.is_finished():
                raise TrialLost() from None
            raise
        finally:
            self.beater.discard(trial._trial_id)

    def book(self, run: TrialRun, counted: bool) -> None:
        """Counters for the progress bar and the error brake."""
        with self._books:
            self.counts[run.status] = self.counts.get(run.status, 0) + 1
            self.errors_in_a_row = self.errors_in_a_row + 1 if run.status == "error" else 0
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW and self.stopped_because is None:
                self.stopped_because = (f"{MAX_ERRORS_IN_A_ROW} trials in a row failed with an error (not an OOM, "
                                        f"not divergence): the set-up, not the configurations; the last: "
                                        f"{run.message}")
                self.drain.set()  # the trials other workers are running finish and count
            if counted:
                self.bar.update(1)
            best = _best_value(self.session.study)
            self.bar.set_postfix(best=f"{best:.4g}" if best is not None else "-", **self.counts)


@contextlib.contextmanager
def closed_on_failure(trial: optuna.Trial, tuner: Tuner) -> Iterator[None]:
    """Whatever goes wrong in the parent between ask and tell, the trial is closed (FAIL), never left RUNNING."""
    try:
        yield
    except TrialLost:
        raise
    except BaseException as exc:
        with contextlib.suppress(UpdateFinishedTrialError):
            stopped = isinstance(exc, KeyboardInterrupt) or full_disk(exc) is not None  # not the configuration's fault
            trial.set_user_attr("status", "interrupted" if stopped else "error")
            trial.set_user_attr("error", f"tuner: {type(exc).__name__}: {exc}"[:300])
            tuner.tell(trial, "error")
        raise


def claim_next(tuner: Tuner, slot: Slot) -> Claim | str:
    """Under the study lock: fail stale trials, then a reference still to run, a trial, a confirmation run (once the
    study holds its --trials), WAIT or DONE."""
    session = tuner.session
    with session.lock:
        for study in (session.study, session.references, session.confirms):
            if study is not None:
                liveness.fail_stale(study)  # queues each one again (the storage's stale callback: requeue)
        claim: Claim | str | None = None
        if session.references is not None:
            claim = dispatch.claim_reference(session.references, session.presets)
        if claim is None:
            claim = dispatch.claim_trial(session.study, session.settings.trials)
            if isinstance(claim, Claim):
                with closed_on_failure(claim.trial, tuner):
                    # Drawn inside the lock: TPE's constant liar sees every trial running anywhere.
                    claim.params = session.space.suggest(claim.trial, legacy=session.legacy_params)
            elif claim == DONE and session.confirms is not None:
                claim = dispatch.claim_confirm(session.study, session.references, session.confirms,
                                               session.settings.confirm, session.settings.seed)
        if isinstance(claim, Claim):
            with closed_on_failure(claim.trial, tuner):
                tuner.beater.add(claim.trial._trial_id)  # alive from the first instant another tuner could look
                liveness.claim_grace(claim.trial.study._storage, claim.trial._trial_id)
                # Which tuner runs it, and where: in the tables while it runs, and after a kill.
                for key, value in (("host", HOST), ("tuner_pid", os.getpid()), ("worker", slot.describe())):
                    claim.trial.set_user_attr(key, value)
        return claim


def job_for(session: Session, claim: Claim, slot: Slot) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The trial's label, what its process needs (configs, data, slot, limits, log, model path), and its params."""
    if claim.preset:
        label, params = f"ref_{claim.preset}", preset_params(claim.preset)
        model, train = reference_configs(claim.preset, session)
    else:
        number = claim.confirm.source.number if claim.confirm else claim.trial.number
        label, params = f"trial_{number:04d}", claim.params
        model, train = trial_configs(params, session)
    if claim.confirm:  # the same configuration, another seed; no model kept (best-model/ is the original run's)
        label, train = f"confirm_{label}_{claim.confirm.run}", {**train, "seed": claim.confirm.seed}
    folder = session.results_dir
    keep = session.settings.save_models and claim.confirm is None
    job = {"model": model, "train": train, "data": str(session.data_dir), "device": session.env["device"],
           "memory_limit": session.settings.memory_limit, "log": str(folder / "logs" / f"{label}.log"),
           "eval_at": list(session.plan.fractions[:-1]),
           "checkpoint": str(folder / "checkpoints" / label) if keep else None,
           "cores": list(slot.cores), "gpu": slot.gpu}
    return label, job, params


def run_claim(tuner: Tuner, claim: Claim, slot: Slot) -> None:
    """Run a claimed trial in `slot`: report at the rungs, prune (a searched trial only), record, tell."""
    session, trial = tuner.session, claim.trial
    s, plan = session.settings, session.plan
    n = len(plan.steps)
    with closed_on_failure(trial, tuner):
        label, job, params = job_for(session, claim, slot)
    if tuner.target:
        job["target"] = tuner.target
    lost = False

    def on_eval(k: int, step: int, train_loss: float, val_loss: float) -> bool:
        nonlocal lost
        if s.objective != "loss" or not math.isfinite(val_loss):
            return False
        k = min(k, n)
        try:
            trial.report(val_loss, plan.steps[k - 1])
        except UpdateFinishedTrialError:  # declared stale by another tuner: stop training for nothing
            lost = True
            return True
        return claim.searched and k < n and trial.should_prune()  # the target itself is never pruned

    limit, judged = session.memory_limit, {}

    def on_predicted(memory: dict[str, Any] | None) -> bool:
        # Calibrated on every run measured so far (any tuner's), and kept with the study for the report.
        judged["calibration"] = calibration = mem.calibrate((session.study, session.references, session.confirms))
        session.study.set_user_attr(mem.CALIBRATION_ATTR, calibration.to_dict())
        # Only a searched configuration is skipped: a reference or a confirmation run is always measured.
        judged["verdict"] = verdict = mem.Verdict.judge(memory, calibration, limit, s.predict and claim.searched)
        return verdict.skip

    try:
        with closed_on_failure(trial, tuner):
            run = tuner.runner.run(job, on_eval, session.timeout, stop=tuner.stop, on_predicted=on_predicted)
            if lost:
                raise TrialLost()
            rung = n if run.status == "ok" else min(len(run.evals), n)
            memory = mem.record_fields(run.memory, judged.get("verdict"), judged.get("calibration"), limit)
            if run.status == "predicted_oom":
                run.message = (f"predicted {memory['predicted_peak_bytes'] / 2**20:,.0f} MiB, over the "
                               f"{limit / 2**20:,.0f} MiB limit by more than {mem.SKIP_MARGIN:.0%}: not run")
            try:
                # A confirmation run of a reference is no reference row: it is told apart by its confirm_of.
                attrs = record(trial, run, params, session.env, {
                    "reference": claim.preset if claim.confirm is None else None, "rung": rung, "rungs": n,
                    "reached_target": run.status == "ok", "checkpoint": (run.result or {}).get("checkpoint"),
                    "retry_of": claim.retry_of, **memory,
                    "config": {"model": job["model"], "train": job["train"]},  # complete: what best.json writes
                })
                violation = mem.violation_mib(run.status, attrs, limit)
                if violation is not None:
                    trial.set_constraint("memory_MiB", violation)
            except UpdateFinishedTrialError:
                raise TrialLost() from None
            value = None
            if run.status == "ok":
                value = run.result["val_loss"] if s.objective == "loss" else run.result["tokens_per_s"]
                if s.objective == "loss" and not any(k >= n for k, *_ in run.evals):
                    try:
                        trial.report(value, plan.steps[-1])  # the final figure, at the target
                    except UpdateFinishedTrialError:
                        raise TrialLost() from None
            tuner.tell(trial, run.status, value)
    except TrialLost:
        tuner.beater.discard(trial._trial_id)
        tuner.say(f"{label}: another tuner declared this trial stale (no heartbeat for {s.grace_period} s: was "
                  f"this tuner frozen or cut off?) and queued it again; this run's result is dropped")
        return
    counted = STATE_OF[run.status] != TrialState.FAIL
    if claim.searched and counted:
        with tuner._books:
            tuner.ran += 1
    if claim.confirm:  # a retry's number in the confirmation study would only confuse
        c = claim.confirm
        again = ", a retry" if claim.retry_of is not None else ""
        name = f"{confirm_label(c.source.name, c.run)} (seed {c.seed}{again})"
    else:
        name = f"ref {claim.preset}" if claim.preset else f"trial {trial.number:3d}"
        name += f" (retry of {claim.retry_of})" if claim.retry_of is not None else ""
    where = f" [{slot.describe()}]" if len(session.slots) > 1 else ""
    tuner.trial_line(*describe_run(name + where, run, trial.user_attrs))
    tuner.book(run, counted and claim.searched)  # the bar counts the searched trials: not references, not re-runs


def work(tuner: Tuner, slot: Slot) -> None:
    """One worker: claim, run, repeat until the study holds --trials counted trials (or we are stopped).

    A failure of the tuner itself (the database went away) closes the trial it hit (recorded as an error and
    queued again, when the storage still answers), is said in one line, and counts toward the error brake like a
    crashed trial: a database restart of a few seconds costs a retry, not the study. A full disk ends the study.
    """
    while not (tuner.stop.is_set() or tuner.drain.is_set()):
        try:
            claim = claim_next(tuner, slot)
            if claim == DONE:
                return
            if claim == WAIT:  # the last trials run elsewhere; one may fail and need a retry
                tuner.stop.wait(tuner.poll_seconds)
                continue
            run_claim(tuner, claim, slot)
        except Exception as exc:
            if full_disk(exc) is not None:  # every trial would fail alike: stop the study (tune.__main__: one line)
                raise
            message = scrub(f"tuner: {type(exc).__name__}: {exc}".splitlines()[0][:300], tuner.session.storage)
            tuner.say(f"worker {slot.index} [{slot.describe()}]: {message}")
            tuner.book(TrialRun(status="error", message=message), counted=False)
            tuner.stop.wait(tuner.poll_seconds)


def run_study(settings: TuneSettings, runner: TrialRunner | None = None, target: str | None = None) -> StudyOutcome:
    """Run (or resume) the references and the study until it holds settings.trials counted trials, then its
    confirmation runs (settings.confirm); the results."""
    runner = runner or TrialRunner()
    session = open_session(settings, runner)
    try:
        return _run_session(session, runner, target)
    finally:
        session.close()


def _run_session(session: Session, runner: TrialRunner, target: str | None) -> StudyOutcome:
    from tune.report.outputs import write_report

    settings, study = session.settings, session.study
    counted = dispatch.tally(study)["counted"]
    remaining = max(settings.trials - counted, 0)
    references = dispatch.references_pending(session.references, session.presets)
    confirms = dispatch.confirm_runs_pending(study, session.references, session.confirms, settings.confirm)
    # The bar counts the searched trials still to run (not references, not confirmation runs: see book()).
    console = Console(remaining, settings.progress, quiet=settings.quiet)
    say, info = console.say, console.info
    info(f"study {study.study_name}: {counted} counted trial(s) so far, running {remaining} more on "
         f"{session.env['device_name']} ({session.dtype}, objective {settings.objective})")
    info(plan_message(session, remaining, references, confirms))
    info(f"storage {session.storage.display}\nresults {session.results_dir}\n"
         f"search space:\n{session.space.describe()}")
    if remaining or references or confirms:
        cores = [c for slot in session.slots for c in slot.cores]
        study.set_user_attr("busy_cores_at_start", warn_if_busy(say, cores))
    beater = Beater(lambda trial_id: liveness.beat(study._storage, trial_id), settings.heartbeat_interval,
                    lambda line: say(f"warning: {line}"))
    tuner = Tuner(session, console.watch(runner), target, say, console.trial, console.bar, beater)
    try:
        interrupted = run_workers(session.slots, lambda slot: work(tuner, slot), tuner.stop)
    finally:
        beater.close()
        console.close()
    if tuner.stopped_because:
        say(f"stopped: {tuner.stopped_because} (see {session.results_dir / 'logs'})")
        study.set_user_attr("stopped_because", tuner.stopped_because)
    records = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    if session.references is not None:
        records.update({f"ref {t.user_attrs.get('reference')}": t.user_attrs
                        for t in session.references.get_trials(deepcopy=False)})
    if session.confirms is not None:
        records.update({confirm_label(t.user_attrs.get("confirm_of"), t.user_attrs.get("confirm_run")):
                        t.user_attrs for t in session.confirms.get_trials(deepcopy=False)})
    for line in trust.study_warnings(records):
        say(f"warning: {line}")
    write_report(study, session.results_dir)
    return StudyOutcome(study=study, results_dir=session.results_dir, ran=tuner.ran, interrupted=interrupted,
                        stopped_because=tuner.stopped_because)


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None
