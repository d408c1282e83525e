"""The tuner's threads: one per worker slot (each runs one trial process at a time) and one heartbeat.

Threads, not processes: a worker thread only waits on its trial process's pipe and talks to the storage, and
Optuna's storages and samplers are used from threads by Optuna itself (study.optimize(n_jobs=...)). The main
thread only waits, so Ctrl-C (delivered to it alone) sets one stop event that every worker honours.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from tune.exec.slots import Slot


class Beater:
    """Records a heartbeat for every trial this tuner runs, every `interval` seconds, from one thread.

    `beat(trial_id)` is the storage's liveness record (tune.store.liveness.beat): while it keeps coming, no other
    tuner declares the trial stale; when this process dies, it stops, and after the grace period the trial is
    failed and queued again by whichever tuner looks first.
    """

    def __init__(self, beat: Callable[[int], None], interval: float, warn: Callable[[str], None]) -> None:
        self._beat, self._interval, self._warn = beat, interval, warn
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Start beating for a trial (a first beat now, before the claim's lock is released)."""
        self._beat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for a trial (it has ended)."""
        with self._lock:
            self._ids.discard(trial_id)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:
                    self._beat(trial_id)
                except Exception as exc:  # a database hiccup: the next beat may pass; the grace period allows it
                    self._warn(f"heartbeat of trial id {trial_id} failed ({type(exc).__name__}); retrying")


def run_workers(slots: list[Slot], work: Callable[[Slot], None], stop: threading.Event) -> bool:
    """Run work(slot) in one thread per slot until all return; Ctrl-C sets `stop` and waits for them.

    Returns True when interrupted by Ctrl-C. The first exception a worker raises stops the others and is raised
    here once they have wound down (their trials recorded).
    """
    failures: list[BaseException] = []
    # Each worker says it has finished through its own event: Thread.join interrupted by Ctrl-C can mark a
    # thread stopped while it still runs (CPython 3.11), and the report must not be written under its feet.
    finished = [threading.Event() for _ in slots]

    def guarded(slot: Slot, done: threading.Event) -> None:
        try:
            work(slot)
        except BaseException as exc:
            failures.append(exc)
            stop.set()
        finally:
            done.set()

    for slot, done in zip(slots, finished):
        threading.Thread(target=guarded, args=(slot, done), name=f"worker-{slot.index}", daemon=True).start()
    interrupted = False
    try:
        for done in finished:
            while not done.wait(0.2):  # a timed wait: the main thread stays responsive to Ctrl-C
                pass
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for done in finished:  # each worker kills its trial process and records the trial as interrupted
            while True:
                try:
                    if done.wait(0.2):
                        break
                except KeyboardInterrupt:  # a second Ctrl-C: the trials are being recorded (a second or two)
                    print("still stopping: recording the running trials", file=sys.stderr, flush=True)
    if failures:
        raise failures[0]
    return interrupted
