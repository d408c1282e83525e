"""Parent side of a trial: start the child, answer its messages (tune.exec.protocol), enforce the hard timeout,
say how it ended (TrialRun; tune.exec.record writes it down).

The parent never imports torch (so it can never initialise CUDA); children are forked from a forkserver
that preloads torch and gptcore once, so each trial starts in tens of milliseconds instead of seconds.

Several threads may each run a trial at once (one per worker slot), sharing one runner and one forkserver.
multiprocessing keeps one process table for all threads (Process.start polls and prunes every other thread's
children), which is not safe against another thread's join or close: every call that touches it holds _TABLE,
and waits on a process's sentinel happen outside the lock.

No orphans: each job carries the tuner's pid and a deadline, and the trial process ends itself with the tuner
or at the deadline (tune.exec.worker.guard), so a kill -9 of the tuner leaves no trial, forkserver or resource
tracker process behind.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gptcore.errors import UserError
from tune.core.outcomes import Status
from tune.exec.protocol import (
    CONTINUE,
    RUN,
    SKIP,
    STOP,
    Evaluated,
    Failed,
    Finished,
    Predicted,
    Probed,
    ProbeFailed,
    Ready,
    TrialJob,
)
from tune.exec.worker import DEADLINE_EXIT, probe, run_trial

# torch._dynamo: the first torch.optim.AdamW(...) in a process imports it (~800 modules, ~1 s); do it once here.
PRELOAD = ["torch", "torch._dynamo", "gptcore.train", "gptcore.data", "gptcore.checkpoint", "tune.exec.worker",
           "tune.exec.protocol", "tune.core.outcomes", "tune.exec.health"]
KILL_GRACE_S = 2.0
# The trial process ends itself this long after the parent's hard timeout: later than the parent's own kill (so
# a live parent reports "timeout" as ever), soon enough that a frozen parent cannot keep it running.
DEADLINE_GRACE_S = 2 * KILL_GRACE_S
POLL_S = 0.1  # how often the parent looks at the stop event between messages: a stop takes effect this fast
_TABLE = threading.Lock()  # multiprocessing's table of child processes (see the module docstring)

# on_eval(k, step, train_loss, val_loss) -> True to stop (prune) the trial.
EvalHandler = Callable[[int, int, float, float], bool]
# on_predicted(memory) -> True to skip the trial: memory is the traced step (gptcore.memory.StepMemory as a dict,
# plus baseline_bytes), or {"error": ..., "baseline_bytes": ...} when the trace failed.
PredictHandler = Callable[[dict[str, Any] | None], bool]


@dataclass
class TrialRun:
    """How one trial process ended, as the parent saw it."""

    status: Status  # never running or queued: the parent sees a trial process end
    result: dict[str, Any] | None = None
    message: str | None = None
    phase: str | None = None
    requested_bytes: int | None = None
    startup_seconds: float | None = None
    trial_seconds: float = 0.0
    evals: list[tuple[int, int, float, float]] = field(default_factory=list)
    measure: dict[str, Any] = field(default_factory=dict)  # what share of the machine it got (tune.exec.health)
    memory: dict[str, Any] | None = None  # the traced step and the process baseline, when the job asked for it


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _start_forkserver()
        return ctx
    return mp.get_context("spawn")  # Windows: slower start-up, same isolation


def _start_forkserver() -> None:
    """Start the forkserver now, with SIGTERM ignored: it keeps that through exec, so a SIGTERM sent to the whole
    process group (systemd, Slurm) cannot end it, and with it every trial, before the tuner has recorded them
    (Python's forkserver already ignores SIGINT). Only the main thread may change a signal's handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import forkserver

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class TrialRunner:
    """Runs trial jobs, each in its own process (several at once from several threads)."""

    def __init__(self) -> None:
        self.ctx = _context()

    def probe(self, device: str, timeout: float = 300.0) -> dict[str, Any]:
        """Ask a child what the device is (the parent must not touch CUDA itself)."""
        conn, proc = self._start(probe, device, os.getpid(), timeout + DEADLINE_GRACE_S)
        try:
            if not conn.poll(timeout):
                raise UserError(f"--device {device}: the device probe did not answer in {timeout:.0f} s")
            answer = conn.recv()
        except EOFError:
            code = _wait(proc, KILL_GRACE_S)
            raise UserError(f"--device {device}: the device probe died ({_signal_name(code or 0)})") from None
        finally:
            _stop(proc, kill=False)
        if isinstance(answer, ProbeFailed) and answer.user_error:
            raise UserError(answer.message)
        if not isinstance(answer, Probed):
            raise RuntimeError(f"device probe failed: {getattr(answer, 'message', answer)}")
        return answer.env

    def run(self, job: TrialJob, on_eval: EvalHandler, timeout: float,
            stop: threading.Event | None = None, on_predicted: PredictHandler | None = None) -> TrialRun:
        """Run one trial; never raises for anything the trial does. Safe to call from several threads at once.

        Ctrl-C (main thread) or `stop` being set (any thread) kills the trial and gives status interrupted. With
        on_predicted, the job traces its step first and the handler says whether to skip it (predicted_oom).
        """
        # The job may name them itself (tests do); by default the trial ends with this process and its timeout.
        job = replace(job, tuner_pid=job.tuner_pid or os.getpid(),
                      deadline_s=job.deadline_s if job.deadline_s is not None else timeout + DEADLINE_GRACE_S,
                      predict=on_predicted is not None)
        t0 = time.perf_counter()
        conn, proc = self._start(run_trial, job)
        call = _TrialCall(conn, proc, t0, timeout, stop, on_eval, on_predicted)
        try:
            call.listen()
        finally:
            call.close()
        return call.run

    def _start(self, target: Callable[..., None], *args: Any) -> tuple[mp.connection.Connection,
                                                                       mp.process.BaseProcess]:
        """Start `target(child end of a pipe, *args)` in a new process; the parent's end and the process."""
        conn, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(child, *args), daemon=True)
        with _TABLE:
            proc.start()
        child.close()  # so that recv() sees EOF when the child dies
        return conn, proc


class _TrialCall:
    """The parent's side of one trial process: its messages answered until it ends, is timed out or is stopped;
    how it ended, in `run`."""

    def __init__(self, conn: mp.connection.Connection, proc: mp.process.BaseProcess, t0: float, timeout: float,
                 stop: threading.Event | None, on_eval: EvalHandler, on_predicted: PredictHandler | None) -> None:
        self.conn, self.proc, self.t0, self.timeout = conn, proc, t0, timeout
        self.stop, self.on_eval, self.on_predicted = stop, on_eval, on_predicted
        self.deadline = t0 + timeout
        self.run = TrialRun(status=Status.ERROR)

    def listen(self) -> None:
        """Handle messages until the trial has ended; Ctrl-C ends it as interrupted."""
        try:
            while not self._next():
                pass
        except KeyboardInterrupt:
            self._end(Status.INTERRUPTED, "stopped by Ctrl-C")

    def close(self) -> None:
        """Stop the process (killed when it was timed out or interrupted), close the pipe, time the trial."""
        _stop(self.proc, kill=self.run.status in (Status.TIMEOUT, Status.INTERRUPTED))
        self.conn.close()
        self.run.trial_seconds = time.perf_counter() - self.t0

    def _next(self) -> bool:
        """Wait for one message (a stop is noticed within POLL_S) and handle it; True once the trial has ended."""
        left = self.deadline - time.perf_counter()
        if left <= 0:
            return self._end(Status.TIMEOUT, f"killed after {self.timeout:.0f} s (hard timeout)")
        if self.stop is not None and self.stop.is_set():
            return self._end(Status.INTERRUPTED, "stopped by the tuner")
        if not self.conn.poll(min(left, POLL_S if self.stop is not None else 1.0)):
            return False
        try:
            message = self.conn.recv()
        except EOFError:
            return self._died()
        return self._handle(message)

    def _handle(self, message: object) -> bool:
        """One message of tune.exec.protocol; True when it was the trial's end."""
        match message:
            case Ready():
                self.run.startup_seconds = time.perf_counter() - self.t0
            case Predicted(memory):
                return self._predicted(memory)
            case Evaluated(k, step, train_loss, val_loss):
                self.run.evals.append((k, step, train_loss, val_loss))
                prune = self.on_eval(k, step, train_loss, val_loss)
                self.conn.send(STOP if prune else CONTINUE)
            case Finished(result, measure):
                self.run.result, self.run.measure = result, measure
                return self._end(Status.PRUNED if result["stopped_by"] == "callback" else Status.OK, None)
            case Failed(outcome, measure):
                self.run.phase, self.run.requested_bytes, self.run.measure = (outcome.phase, outcome.requested_bytes,
                                                                              measure)
                return self._end(Status.parse(outcome.status), outcome.message)
        return False

    def _predicted(self, memory: dict[str, Any]) -> bool:
        """Ask on_predicted whether to run the traced step; True (the end: predicted_oom) when it says skip."""
        self.run.memory = memory
        skip = self.on_predicted is not None and self.on_predicted(memory)
        self.conn.send(SKIP if skip else RUN)
        if not skip:
            return False
        return self._end(Status.PREDICTED_OOM, "predicted out of memory: not run")

    def _died(self) -> bool:
        """The pipe closed without an end: the process ended itself at its deadline, or died (a signal, an exit)."""
        code = _wait(self.proc, KILL_GRACE_S)
        if code == DEADLINE_EXIT:  # it ended itself at its deadline: this parent was too slow
            return self._end(Status.TIMEOUT, f"ended itself after {self.timeout:.0f} s (hard timeout)")
        how = _signal_name(code) if code is not None and code < 0 else f"exit code {code}"
        hint = " (the kernel's OOM killer?)" if code == -signal.SIGKILL else ""
        return self._end(Status.ERROR, f"trial process died: {how}{hint}")

    def _end(self, status: Status, message: str | None) -> bool:
        self.run.status, self.run.message = status, message
        return True


def _stop(proc: mp.process.BaseProcess, kill: bool) -> None:
    """Let a child that reported its end exit; kill one that is still working (hung, timed out, interrupted)."""
    code = None if kill else _wait(proc, KILL_GRACE_S)
    if code is None:
        with _TABLE:
            proc.kill()
        code = _wait(proc, KILL_GRACE_S)
    if code is not None and sys.platform != "win32":
        with _TABLE:
            proc.close()


def _wait(proc: mp.process.BaseProcess, timeout: float) -> int | None:
    """Wait up to `timeout` s for `proc` to end; its exit code, None while it runs (waits without the lock)."""
    mp.connection.wait([proc.sentinel], timeout)
    with _TABLE:
        return proc.exitcode
