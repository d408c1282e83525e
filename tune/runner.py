"""Parent side of a trial: start the child, relay evaluations, enforce the hard timeout, record the end.

The parent never imports torch (so it can never initialise CUDA); children are forked from a forkserver
that preloads torch and gptcore once, so each trial starts in tens of milliseconds instead of seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptcore.errors import UserError

# torch._dynamo: the first torch.optim.AdamW(...) in a process imports it (~800 modules, ~1 s); do it once here.
PRELOAD = ["torch", "torch._dynamo", "gptcore.train", "gptcore.data", "gptcore.checkpoint", "tune.worker",
           "tune.outcomes", "tune.health"]
KILL_GRACE_S = 2.0

# on_eval(k, step, train_loss, val_loss) -> True to stop (prune) the trial.
EvalHandler = Callable[[int, int, float, float], bool]


@dataclass
class TrialRun:
    """How one trial process ended, as the parent saw it."""

    status: str  # ok | pruned | oom | diverged | timeout | error | interrupted
    result: dict[str, Any] | None = None
    message: str | None = None
    phase: str | None = None
    requested_bytes: int | None = None
    startup_seconds: float | None = None
    trial_seconds: float = 0.0
    evals: list[tuple[int, int, float, float]] = field(default_factory=list)
    measure: dict[str, Any] = field(default_factory=dict)  # what share of the machine it got (tune.health)


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
        from tune import worker

        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker.probe, args=(child, device), daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(timeout):
                raise UserError(f"--device {device}: the device probe did not answer in {timeout:.0f} s")
            kind, payload = parent.recv()
        except EOFError:
            raise UserError(f"--device {device}: the device probe died ({_signal_name(proc.exitcode or 0)})") from None
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        if kind == "user_error":
            raise UserError(payload)
        if kind != "ok":
            raise RuntimeError(f"device probe failed: {payload}")
        return payload

    def run(self, job: dict[str, Any], on_eval: EvalHandler, timeout: float) -> TrialRun:
        """Run one trial; never raises for anything the trial does (Ctrl-C gives status interrupted)."""
        from tune import worker

        parent, child = self.ctx.Pipe()
        t0 = time.perf_counter()
        proc = self.ctx.Process(target=worker.run_trial, args=(child, job), daemon=True)
        proc.start()
        child.close()  # so that recv() sees EOF when the child dies
        run = TrialRun(status="error")
        deadline = t0 + timeout
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    run.status, run.message = "timeout", f"killed after {timeout:.0f} s (hard timeout)"
                    break
                if not parent.poll(min(left, 1.0)):
                    continue
                try:
                    msg = parent.recv()
                except EOFError:
                    proc.join(KILL_GRACE_S)
                    code = proc.exitcode
                    how = _signal_name(code) if code is not None and code < 0 else f"exit code {code}"
                    hint = " (the kernel's OOM killer?)" if code == -signal.SIGKILL else ""
                    run.status, run.message = "error", f"trial process died: {how}{hint}"
                    break
                if msg[0] == "ready":
                    run.startup_seconds = time.perf_counter() - t0
                elif msg[0] == "eval":
                    _, k, step, train_loss, val_loss = msg
                    run.evals.append((k, step, train_loss, val_loss))
                    stop = on_eval(k, step, train_loss, val_loss)
                    parent.send("stop" if stop else "continue")
                elif msg[0] == "done":
                    _, run.result, run.measure = msg
                    run.status = "pruned" if run.result["stopped_by"] == "callback" else "ok"
                    break
                elif msg[0] == "failed":
                    _, run.status, run.message, run.phase, run.requested_bytes, run.measure = msg
                    break
        except KeyboardInterrupt:
            run.status, run.message = "interrupted", "stopped by Ctrl-C"
        finally:
            self._stop(proc, kill=run.status in ("timeout", "interrupted"))
            parent.close()
            run.trial_seconds = time.perf_counter() - t0
        return run

    @staticmethod
    def _stop(proc: mp.process.BaseProcess, kill: bool) -> None:
        """Let a child that reported its end exit; kill one that is still working (hung, timed out, interrupted)."""
        if not kill:
            proc.join(KILL_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join(KILL_GRACE_S)
        if sys.platform != "win32":
            proc.close()
