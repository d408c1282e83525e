"""Helper processes that end with the process they work for, however it ends (kill -9 included).

Two mechanisms, because neither covers every case alone: the kernel's parent-death signal (Linux; immediate, but
it follows the *parent*, which for a forkserver child is the forkserver, not the process that asked for it), and
a watchdog thread that polls a condition (any OS; catches what the signal cannot, at the cost of a poll interval).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from gptcore.files import pid_alive

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.25

# check() -> None while all is well, else (exit code, message or None): the watchdog ends the process with it.
Verdict = tuple[int, str | None]


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watchdog(check: Callable[[], Verdict | None], interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that calls check() every `interval` s and ends the process (os._exit) on a verdict."""

    def loop() -> None:
        while True:
            verdict = check()
            if verdict is not None:
                code, message = verdict
                if message:
                    with contextlib.suppress(OSError):  # stderr may be closed; the exit matters, not the line
                        os.write(2, f"{message}\n".encode())
                # os._exit, not sys.exit: the main thread may be deep in a kernel or blocked on a pipe.
                os._exit(code)
            time.sleep(interval)

    thread = threading.Thread(target=loop, daemon=True, name="watchdog")
    thread.start()
    return thread


def end_with(parent: int) -> None:
    """Make this process end when process `parent` dies (a pool initializer: a kill -9 must not orphan it)."""
    if os.getppid() == parent:
        die_with_parent()  # the kernel signals this process the moment its parent dies, however it dies
    # Elsewhere, if the parent died before prctl took effect, or when `parent` is not our parent: poll.
    watchdog(lambda: None if pid_alive(parent) else (1, None), interval=0.5)
