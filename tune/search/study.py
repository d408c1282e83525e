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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tune.core import trust
from tune.core.budget import format_seconds
from tune.core.confirm import confirm_label, run_stem
from tune.core.epochs import EpochEstimate
from tune.core.outcomes import Status
from tune.core.schema import PREDICTION
from tune.core.space import preset_params
from tune.exec.console import Console
from tune.exec.pool import Beater, run_workers
from tune.exec.protocol import TrialJob
from tune.exec.record import describe_run, figures, record
from tune.exec.runner import TrialRun, TrialRunner
from tune.exec.slots import Slot
from tune.memory import judge as mem
from tune.report import keep as keep_models
from tune.search import dispatch, predict
from tune.search.dispatch import DONE, WAIT, Claim
from tune.search.session import (
    Session,
    StudyOutcome,
    epoch_estimate,
    full_disk,
    open_session,
    plan_message,
    reference_configs,
    target_budgets,
    trial_configs,
    warn_if_busy,
)
from tune.search.settings import TuneSettings
from tune.store import _optuna, liveness, told
from tune.store.spec import scrub

# This many errors in a row (not OOM, not divergence: crashes) mean the set-up is broken, not the configurations:
# the tuner stops instead of sampling forever.
MAX_ERRORS_IN_A_ROW = 3
HOST = socket.gethostname()
now = time.monotonic  # --max-time's clock (a test moves it)


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
    deadline: float | None = None  # --max-time: the monotonic clock's time after which no run is claimed
    time_up: bool = False
    trackers: Any = None  # --log-to: tune.report.tracking.Trackers, or None
    _books: threading.Lock = field(default_factory=threading.Lock)
    _answer: threading.Lock = field(default_factory=threading.Lock)

    @property
    def poll_seconds(self) -> float:
        """How often a waiting worker looks again (for stale trials, or the study's end)."""
        return min(5.0, self.session.settings.heartbeat_interval)

    def tell(self, trial: optuna.Trial, status: Status, value: float | None = None) -> None:
        """Tell Optuna how a trial ended; a failure is queued again in the same locked step (never twice)."""
        study = trial.study
        try:
            if told.state_of(status) == TrialState.FAIL:
                with self.session.lock:
                    study.tell(trial, state=TrialState.FAIL)
                    dispatch.requeue(study, _optuna.storage_of(study).get_trial(_optuna.trial_id(trial)))
            else:
                told.tell(study, trial, status, value)
        except (UpdateFinishedTrialError, ValueError):
            # Optuna 5 refuses to tell a finished trial with ValueError ("Cannot tell a FAIL trial"): another
            # tuner failed it as stale. Any other ValueError is ours and must surface.
            if _optuna.storage_of(study).get_trial(_optuna.trial_id(trial)).state.is_finished():
                raise TrialLost() from None
            raise
        finally:
            self.beater.discard(_optuna.trial_id(trial))

    def out_of_time(self) -> bool:
        """Whether --max-time has passed: the first worker to see it says so, and every worker stops claiming."""
        if self.deadline is None or now() < self.deadline:
            return False
        with self._books:
            if not self.time_up:
                self.time_up = True
                self.drain.set()  # the running trials finish and count; nothing new starts
                self.say(f"--max-time {format_seconds(self.session.settings.execution.max_time)} reached: no new "
                         f"run starts; the running ones finish")
        return True

    def refresh_answer(self) -> None:
        """Write best.json, best-model/, trials.csv and summary.md as they stand (the plots wait for the end), so a
        crash, a kill or --max-time at any moment leaves the answer so far."""
        from tune.report.outputs import write_report

        session = self.session
        with self._answer:  # one writer at a time; each reads the storage afresh, so the last one is current
            try:
                write_report(session.study, session.results_dir, plots=False)
            except Exception as exc:  # the study's figures are stored: the files are written again at the end
                if full_disk(exc) is not None:
                    raise
                self.say(f"warning: could not write the answer so far ({type(exc).__name__}: {exc})"[:300])

    def book(self, run: TrialRun, counted: bool) -> None:
        """Counters for the progress bar and the error brake."""
        with self._books:
            self.counts[run.status.value] = self.counts.get(run.status.value, 0) + 1
            self.errors_in_a_row = self.errors_in_a_row + 1 if run.status == Status.ERROR else 0
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
            trial.set_user_attr("status", (Status.INTERRUPTED if stopped else Status.ERROR).value)
            trial.set_user_attr("error", f"tuner: {type(exc).__name__}: {exc}"[:300])
            tuner.tell(trial, Status.ERROR)
        raise


def claim_next(tuner: Tuner, slot: Slot) -> Claim | str:
    """Under the study lock: fail stale trials, then a searched trial, a reference still to run (once no searched
    trial is left to claim), a confirmation run (once the study and its references are done), WAIT or DONE."""
    session = tuner.session
    with session.lock:
        for study in (session.study, session.references, session.confirms):
            if study is not None:
                liveness.fail_stale(study)  # queues each one again (the storage's stale callback: requeue)
        claim: Claim | str | None = dispatch.claim_trial(session.study, session.settings.trials)
        if isinstance(claim, Claim):
            with closed_on_failure(claim.trial, tuner):
                # Drawn inside the lock: TPE's constant liar sees every trial running anywhere.
                claim.params = session.space.suggest(claim.trial, legacy=session.legacy_params)
        elif session.references is not None:  # no searched trial left to claim: the references' turn
            claim = dispatch.claim_reference(session.references, session.presets) or claim
        if claim == DONE and session.confirms is not None:
            claim = dispatch.claim_confirm(session.study, session.references, session.confirms,
                                           session.settings.confirm, session.settings.seed)
        if isinstance(claim, Claim):
            with closed_on_failure(claim.trial, tuner):
                # alive from the first instant another tuner could look
                tuner.beater.add(_optuna.trial_id(claim.trial))
                liveness.claim_grace(_optuna.storage_of(claim.trial.study), _optuna.trial_id(claim.trial))
                # Which tuner runs it, and where: in the tables while it runs, and after a kill.
                for key, value in (("host", HOST), ("tuner_pid", os.getpid()), ("worker", slot.describe())):
                    claim.trial.set_user_attr(key, value)
        return claim


def job_for(session: Session, claim: Claim, slot: Slot) -> tuple[str, TrialJob, dict[str, Any]]:
    """The trial's label, what its process needs (configs, data, slot, limits, log, model path), and its params."""
    if claim.preset:
        label, params = run_stem(None, claim.preset), preset_params(claim.preset)
        model, train = reference_configs(claim.preset, session)
    else:
        number = claim.confirm.source.number if claim.confirm else claim.trial.number
        label, params = run_stem(number, None), claim.params
        model, train = trial_configs(params, session)
    # The extra fields' values as trained: a reference's unsearched ones too, so its row shows them.
    params = {**params, **session.space.values_in(model, train)}
    if claim.confirm:  # the same configuration, another seed; no model kept (best-model/ is the original run's)
        label, train = f"confirm_{label}_{claim.confirm.run}", {**train, "seed": claim.confirm.seed}
    folder = session.results_dir
    keep = session.settings.save_models and claim.confirm is None
    job = TrialJob(model=model, train=train, data=str(session.data_dir), device=session.env["device"],
                   memory_limit=session.settings.memory_limit, log=str(folder / "logs" / f"{label}.log"),
                   eval_at=list(session.plan.fractions[:-1]),
                   checkpoint=str(folder / "checkpoints" / label) if keep else None,
                   cores=list(slot.cores), gpu=slot.gpu,
                   # One compile cache per study: a configuration seen before (a retry, a confirmation) compiles
                   # from it.
                   compile_cache=str(folder / "compile-cache"))
    return label, job, params


def run_claim(tuner: Tuner, claim: Claim, slot: Slot) -> None:
    """Run a claimed trial in `slot`: report at the rungs, prune (a searched trial only), record, tell."""
    ClaimRun(tuner, claim, slot).run()


class ClaimRun:
    """One claimed trial in its slot: the trial process reports at the rungs (where a searched trial may be
    pruned), the memory judge may skip it, then its end is recorded, told to Optuna and said on the console."""

    def __init__(self, tuner: Tuner, claim: Claim, slot: Slot) -> None:
        self.tuner, self.claim, self.slot, self.trial = tuner, claim, slot, claim.trial
        self.session = session = tuner.session
        self.settings, self.plan, self.limit = session.settings, session.plan, session.memory_limit
        self.n = len(self.plan.steps)
        self.lost = False  # another tuner failed the trial as stale while it ran
        self.verdict: mem.Verdict | None = None  # the memory judge's, when the trial traced its step
        self.calibration: Any = None  # what the verdict was judged with

    def run(self) -> None:
        """Train it, record and tell how it ended, and say so; a trial another tuner took over is only said."""
        with closed_on_failure(self.trial, self.tuner):
            self.label, self.job, self.params = job_for(self.session, self.claim, self.slot)
        if self.tuner.target:
            self.job.target = self.tuner.target
        try:
            with closed_on_failure(self.trial, self.tuner):
                run = self._train()
                value = self._record(run)
                self.tuner.tell(self.trial, run.status, value)
        except TrialLost:
            self._lost()
            return
        self._say(run)
        if run.status == Status.OK and self._may_change_answer():  # best.json says it from now on
            self.tuner.refresh_answer()
        self._track(run)
        if run.result and run.result.get("checkpoint"):
            prune_models(self.tuner)

    def _may_change_answer(self) -> bool:
        """Whether this run, which reached the target, may change the answer: a reference or a confirmation run, or
        a searched trial that is now the study's best. Only then is the answer written again (the writing runs in
        the tuner's process, beside the trials still running on the same cores)."""
        if not self.claim.searched:
            return True
        try:
            return self.session.study.best_trial.number == self.trial.number
        except ValueError:  # no trial has a value (it was just told: not expected)
            return True

    def on_eval(self, k: int, step: int, train_loss: float, val_loss: float) -> bool:
        """Report the loss at rung k (objective loss); True to stop: pruned, or lost to another tuner."""
        if self.settings.objective != "loss" or not math.isfinite(val_loss):
            return False
        k = min(k, self.n)
        try:
            self.trial.report(val_loss, self.plan.steps[k - 1])
            # The target is never pruned, nor a confirmation run (its configuration already reached the target).
            return k < self.n and self.claim.confirm is None and self._judge(k, val_loss)
        except UpdateFinishedTrialError:  # declared stale by another tuner: stop training for nothing
            self.lost = True
            return True

    def _judge(self, k: int, val_loss: float) -> bool:
        """At rung k below the target: record the run's predicted target loss, then whether it stops there (a
        searched trial: the study's pruner; a reference, with --pruner predict: when it is predicted to lose)."""
        study = self.session.study
        step = self.plan.steps[k - 1]
        p, best = predict.predict(study, step, val_loss), predict.incumbent(study)
        if p is not None:
            for key, value in predict.prediction_attrs(p, k, best).items():
                self.trial.set_user_attr(key, value)
        if self.claim.searched:
            frozen = _optuna.storage_of(study).get_trial(_optuna.trial_id(self.trial))
            why = predict.stop_reason(study.pruner, study, frozen)
        elif isinstance(study.pruner, predict.PredictivePruner):  # a reference: stopped by the prediction alone
            why = PREDICTION if predict.cannot_win(p, best) else None
        else:
            why = None
        if why:
            self.trial.set_user_attr("stopped_by", why)
        return why is not None

    def on_predicted(self, memory: dict[str, Any] | None) -> bool:
        """Judge the traced step against the limit; True to skip the trial (predicted out of memory)."""
        session = self.session
        # Calibrated on every run measured so far (any tuner's), and kept with the study for the report.
        self.calibration = mem.calibrate((session.study, session.references, session.confirms))
        session.study.set_user_attr(mem.CALIBRATION_ATTR, self.calibration.to_dict())
        # Only a searched configuration is skipped: a reference or a confirmation run is always measured.
        skippable = self.settings.predict and self.claim.searched
        # How far over the limit a prediction may be and still run: the study's measured over-predictions.
        margin = mem.margin_of((session.study, session.references, session.confirms))
        self.verdict = mem.Verdict.judge(memory, self.calibration, self.limit, skippable, margin)
        return self.verdict.skip

    def _train(self) -> TrialRun:
        """The trial process's run, from start to end (TrialLost: another tuner took the trial over meanwhile)."""
        # The step is traced only against a limit (--memory-limit, or a GPU's memory): without one no verdict could
        # skip anything, and the trace costs ~1 s of every run (a third of a pruned trial on a 12 s CPU target).
        judge = self.on_predicted if self.limit is not None else None
        run = self.tuner.runner.run(self.job, self.on_eval, self.session.timeout, stop=self.tuner.stop,
                                    on_predicted=judge)
        if self.lost:
            raise TrialLost()
        return run

    def _record(self, run: TrialRun) -> float | None:
        """Report the value at the target, set the memory constraint, then write the record (its status last: from
        then on the result is complete, even if this tuner dies before telling it); the value to tell."""
        memory = mem.record_fields(run.memory, self.verdict, self.calibration, self.limit)
        if run.status == Status.PREDICTED_OOM:
            run.message = (f"predicted {memory['predicted_peak_bytes'] / 2**20:,.0f} MiB, over the "
                           f"{self.limit / 2**20:,.0f} MiB limit by more than {self.verdict.margin.share:.0%} "
                           f"({self.verdict.margin.why}): not run")
        try:
            value = self._value(run)
            extra = {**self._extra(run, memory), told.VALUE_KEY: value}
            attrs = figures(run, self.params, self.session.env, extra)
            violation = mem.violation_mib(run.status, attrs, self.limit)
            if violation is not None:
                self.trial.set_constraint("memory_MiB", violation)
            record(self.trial, attrs)
        except UpdateFinishedTrialError:
            raise TrialLost() from None
        return value

    def _extra(self, run: TrialRun, memory: dict[str, Any]) -> dict[str, Any]:
        """The record's fields beyond the run's own figures: what the trial is, how far it got, its memory."""
        claim = self.claim
        return {
            # A confirmation run of a reference is no reference row: it is told apart by its confirm_of.
            "reference": claim.preset if claim.confirm is None else None,
            "rung": self.n if run.status == Status.OK else min(len(run.evals), self.n), "rungs": self.n,
            "reached_target": run.status == Status.OK, "checkpoint": (run.result or {}).get("checkpoint"),
            "retry_of": claim.retry_of, **memory,
            "config": {"model": self.job.model, "train": self.job.train},  # complete: what best.json writes
        }

    def _value(self, run: TrialRun) -> float | None:
        """The objective value of a trial that trained to the target (None otherwise), reported at the target
        when no evaluation reported it there."""
        if run.status != Status.OK:
            return None
        loss = self.settings.objective == "loss"
        value = run.result["val_loss"] if loss else run.result["tokens_per_s"]
        if loss and not any(k >= self.n for k, *_ in run.evals):
            self.trial.report(value, self.plan.steps[-1])  # the final figure, at the target
        return value

    def _lost(self) -> None:
        """Another tuner took the trial over as stale: it failed it (and queued it again), or told it from its
        complete record; either way this tuner tells nothing."""
        self.tuner.beater.discard(_optuna.trial_id(self.trial))
        counted = self.trial.study.get_trials(deepcopy=False, states=tuple(told.COUNTED_STATES))
        fate = ("told Optuna its result from its record" if any(t.number == self.trial.number for t in counted)
                else "queued it again; this run's result is dropped")
        self.tuner.say(f"{self.label}: another tuner declared this trial stale (no heartbeat for "
                       f"{self.settings.grace_period} s: was this tuner frozen or cut off?) and {fate}")

    def _say(self, run: TrialRun) -> None:
        """The trial's line and warnings on the console; the books (ran, the bar, the error brake)."""
        counted = run.status.counted and self.claim.searched  # the bar counts searched trials only
        if counted:
            with self.tuner._books:
                self.tuner.ran += 1
        where = f" [{self.slot.describe()}]" if len(self.session.slots) > 1 else ""
        self.tuner.trial_line(*describe_run(self._name() + where, run, self.trial.user_attrs))
        self.tuner.book(run, counted)

    def _track(self, run: TrialRun) -> None:
        """--log-to: the run, its parameters and the curve its process wrote, to each tracker; failures warned."""
        if self.tuner.trackers is None:
            return
        from tune.report.tracking import tracked_run

        claim = self.claim
        final = run.result or {}
        val = final.get("val_loss", run.evals[-1][3] if run.evals else None)
        tags = {"trial": claim.trial.number if claim.searched else None, "reference": claim.preset,
                "confirm_of": claim.confirm.source.name if claim.confirm else None, "retry_of": claim.retry_of}
        tracked = tracked_run(self.session.study.study_name, self.label, self.job.log,
                              {**self.params, "seed": self.job.train.get("seed")}, run.status.value,
                              {"val_loss": val, "tokens_per_s": final.get("tokens_per_s")}, tags)
        for line in self.tuner.trackers.log(tracked):
            self.tuner.say(f"warning: {line}")

    def _name(self) -> str:
        """How the console names the trial: 'trial  12 (retry of 9)', 'ref baby', 'confirm trial 3 #1 (seed 4)'."""
        claim = self.claim
        if claim.confirm:  # a retry's number in the confirmation study would only confuse
            c = claim.confirm
            again = ", a retry" if claim.retry_of is not None else ""
            return f"{confirm_label(c.source.name, c.run)} (seed {c.seed}{again})"
        name = f"ref {claim.preset}" if claim.preset else f"trial {self.trial.number:3d}"
        return name + (f" (retry of {claim.retry_of})" if claim.retry_of is not None else "")


def prune_models(tuner: Tuner) -> None:
    """Keep the best --keep-models checkpoints, and while the study runs those of the configurations it may yet
    confirm and the current best (best-model/ is copied from it at the end): tune.report.keep."""
    session = tuner.session
    settings = session.settings
    if not settings.save_models:
        return
    keep = max(settings.output.keep_models, settings.confirm if session.confirms is not None else 0, 1)
    try:
        keep_models.prune(session.results_dir, session.study, session.references, keep)
    except OSError as exc:  # the models stay: a disk concern, never a reason to stop the study
        tuner.say(f"warning: --keep-models: could not prune the checkpoints ({exc})")


def study_over(session: Session) -> bool:
    """Whether nothing is left to run anywhere: --trials counted, every reference and confirmation run done."""
    s = session.settings
    n = dispatch.tally(session.study)
    if n["counted"] < s.trials or n["running"] or n["queued"]:
        return False
    if dispatch.references_pending(session.references, session.presets):
        return False
    for other in (session.references, session.confirms):
        if other is not None and other.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            return False
    if session.confirms is None or s.confirm <= 0:
        return True
    return dispatch.next_confirm_run(session.study, session.references, session.confirms, s.confirm) is None


def work(tuner: Tuner, slot: Slot) -> None:
    """One worker: claim, run, repeat until the study holds --trials counted trials (or we are stopped).

    A failure of the tuner itself (the database went away) closes the trial it hit (recorded as an error and
    queued again, when the storage still answers), is said in one line, and counts toward the error brake like a
    crashed trial: a database restart of a few seconds costs a retry, not the study. A full disk ends the study.
    """
    while not (tuner.stop.is_set() or tuner.drain.is_set() or tuner.out_of_time()):
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
            tuner.book(TrialRun(status=Status.ERROR, message=message), counted=False)
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
    epochs = None
    if remaining or references or confirms:  # before the first trial: what the target means for this corpus
        budgets = target_budgets(session, remaining, references, confirms)
        epochs = epoch_estimate(session, runner, references, budgets * (session.budget.seconds or 0))
    info(plan_message(session, remaining, references, confirms, epochs))
    if isinstance(epochs, EpochEstimate) and epochs.warning():
        say(epochs.warning())
    info(f"storage {session.storage.display}\nresults {session.results_dir}\n"
         f"search space:\n{session.space.describe()}")
    if remaining or references or confirms:
        cores = [c for slot in session.slots for c in slot.cores]
        study.set_user_attr("busy_cores_at_start", warn_if_busy(say, cores))
    beater = Beater(lambda trial_id: liveness.beat(_optuna.storage_of(study), trial_id), settings.heartbeat_interval,
                    lambda line: say(f"warning: {line}"))
    tuner = Tuner(session, console.watch(runner), target, say, console.trial, console.bar, beater)
    max_time = settings.execution.max_time
    tuner.deadline = None if max_time is None else now() + max_time
    if settings.output.log_to:
        from tune.report.tracking import Trackers

        tuner.trackers = Trackers(settings.output.log_to, session.results_dir, study.study_name)
    prune_models(tuner)  # a resumed study: its --keep-models now, and the trash a killed prune left
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
    # Once nothing is left to run anywhere, best-model/ is copied and only the best --keep-models stay.
    over = settings.save_models and not interrupted and study_over(session)
    write_report(study, session.results_dir, keep_models=settings.output.keep_models if over else None)
    if tuner.time_up and not interrupted:
        say(f"--max-time {format_seconds(max_time)}: stopped with {dispatch.tally(study)['counted']} of "
            f"{settings.trials} trial(s) counted; best.json and summary.md hold the answer so far (the same command "
            f"resumes the study)")
    return StudyOutcome(study=study, results_dir=session.results_dir, ran=tuner.ran, interrupted=interrupted,
                        stopped_because=tuner.stopped_because, time_up=tuner.time_up)


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None
