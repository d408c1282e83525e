"""Parent side of a trial: start the child, relay evaluations, enforce the hard timeout, record the end.

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
from dataclasses import dataclass, field
from typing import Any

from gptcore.errors import UserError
from tune.core.outcomes import Status

# torch._dynamo: the first torch.optim.AdamW(...) in a process imports it (~800 modules, ~1 s); do it once here.
PRELOAD = ["torch", "torch._dynamo", "gptcore.train", "gptcore.data", "gptcore.checkpoint", "tune.exec.worker",
           "tune.core.outcomes", "tune.exec.health"]
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
        return ctx
    return mp.get_context("spawn")  # Windows: slower start-up, same isolation


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class TrialRunner:
    """Runs trial jobs one at a time, each in its own process."""

    def __init__(self) -> None:
        self.ctx = _context()

    def probe(self, device: str, timeout: float = 300.0) -> dict[str, Any]:
        """Ask a child what the device is (the parent must not touch CUDA itself)."""
        from tune.exec import worker

        parent, child = self.ctx.Pipe()
        args = (child, device, os.getpid(), timeout + DEADLINE_GRACE_S)
        proc = self.ctx.Process(target=worker.probe, args=args, daemon=True)
        with _TABLE:
            proc.start()
        child.close()
        try:
            if not parent.poll(timeout):
                raise UserError(f"--device {device}: the device probe did not answer in {timeout:.0f} s")
            kind, payload = parent.recv()
        except EOFError:
            code = _wait(proc, KILL_GRACE_S)
            raise UserError(f"--device {device}: the device probe died ({_signal_name(code or 0)})") from None
        finally:
            self._stop(proc, kill=False)
        if kind == "user_error":
            raise UserError(payload)
        if kind != "ok":
            raise RuntimeError(f"device probe failed: {payload}")
        return payload

    def run(self, job: dict[str, Any], on_eval: EvalHandler, timeout: float,
            stop: threading.Event | None = None, on_predicted: PredictHandler | None = None) -> TrialRun:
        """Run one trial; never raises for anything the trial does. Safe to call from several threads at once.

        Ctrl-C (main thread) or `stop` being set (any thread) kills the trial and gives status interrupted. With
        on_predicted, the job traces its step first and the handler says whether to skip it (predicted_oom).
        """
        from tune.exec import worker

        # The job may name them itself (tests do); by default the trial ends with this process and its timeout.
        job = {"tuner_pid": os.getpid(), "deadline_s": timeout + DEADLINE_GRACE_S, **job,
               "predict": on_predicted is not None}
        parent, child = self.ctx.Pipe()
        t0 = time.perf_counter()
        proc = self.ctx.Process(target=worker.run_trial, args=(child, job), daemon=True)
        with _TABLE:
            proc.start()
        child.close()  # so that recv() sees EOF when the child dies
        run = TrialRun(status=Status.ERROR)
        deadline = t0 + timeout
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    run.status, run.message = Status.TIMEOUT, f"killed after {timeout:.0f} s (hard timeout)"
                    break
                if stop is not None and stop.is_set():
                    run.status, run.message = Status.INTERRUPTED, "stopped by the tuner"
                    break
                if not parent.poll(min(left, POLL_S if stop is not None else 1.0)):
                    continue
                try:
                    msg = parent.recv()
                except EOFError:
                    code = _wait(proc, KILL_GRACE_S)
                    if code == worker.DEADLINE_EXIT:  # it ended itself at its deadline: this parent was too slow
                        run.status, run.message = Status.TIMEOUT, f"ended itself after {timeout:.0f} s (hard timeout)"
                        break
                    how = _signal_name(code) if code is not None and code < 0 else f"exit code {code}"
                    hint = " (the kernel's OOM killer?)" if code == -signal.SIGKILL else ""
                    run.status, run.message = Status.ERROR, f"trial process died: {how}{hint}"
                    break
                if msg[0] == "ready":
                    run.startup_seconds = time.perf_counter() - t0
                elif msg[0] == "predicted":
                    run.memory = msg[1]
                    skip = on_predicted is not None and on_predicted(run.memory)
                    parent.send("skip" if skip else "run")
                    if skip:
                        run.status, run.message = Status.PREDICTED_OOM, "predicted out of memory: not run"
                        break
                elif msg[0] == "eval":
                    _, k, step, train_loss, val_loss = msg
                    run.evals.append((k, step, train_loss, val_loss))
                    prune = on_eval(k, step, train_loss, val_loss)
                    parent.send("stop" if prune else "continue")
                elif msg[0] == "done":
                    _, run.result, run.measure = msg
                    run.status = Status.PRUNED if run.result["stopped_by"] == "callback" else Status.OK
                    break
                elif msg[0] == "failed":
                    _, status, run.message, run.phase, run.requested_bytes, run.measure = msg
                    run.status = Status.parse(status)
                    break
        except KeyboardInterrupt:
            run.status, run.message = Status.INTERRUPTED, "stopped by Ctrl-C"
        finally:
            self._stop(proc, kill=run.status in (Status.TIMEOUT, Status.INTERRUPTED))
            parent.close()
            run.trial_seconds = time.perf_counter() - t0
        return run

    @staticmethod
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
