"""What a tuner prints: a live bar on a terminal, plain lines otherwise, and less with --quiet.

On a terminal the bar counts the study's trials and, redrawn every second by a small timer thread, names the
trials running now and how long each has run, so it never looks frozen during a long trial. Off a terminal
(redirected to a file, CI) there is no bar and no carriage return at all: each finished trial is one plain line.
With --quiet only warnings, errors and the final lines are printed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

TICK_SECONDS = 1.0


def on_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal (a bar's redraws belong there and nowhere else)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Console:
    """A tuner's output: say() for the lines, `bar` for the count, watch() to show the running trials."""

    def __init__(self, total: int, progress: bool, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet  # --quiet: only warnings, errors and the final lines
        self.live = progress and not self.quiet and on_terminal(self.stream)
        self.bar = tqdm(total=total, unit="trial", desc="tune", disable=not self.live, file=self.stream,
                        dynamic_ncols=True)
        self._running: dict[int, tuple[str, float]] = {}  # id of a run in flight -> (label, start time)
        self._took: list[float] = []  # seconds each finished run took (references and confirmation runs too)
        self._widest = 1  # the most runs in flight at once: the pace the ETA assumes
        self._stopping: threading.Event | None = None  # the tuner's stop (Ctrl-C): the bar ends on its own line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="tune-bar", daemon=True) if self.live else None
        if self._ticker is not None:
            self._ticker.start()

    def info(self, text: str) -> None:
        """A line of narration (the plan, the storage): dropped with --quiet."""
        if not self.quiet:
            self._write(text)

    def say(self, text: str) -> None:
        """One of the tuner's messages (a warning, an error, a lost trial): always printed."""
        self._write(text)

    def trial(self, line: str, warnings: list[str]) -> None:
        """A finished trial's line and its warnings; with --quiet, the warnings only."""
        text = "\n".join([*([] if self.quiet else [line]), *(f"{'' if self.quiet else '    '}warning: {w}"
                                                             for w in warnings)])
        if text:
            self._write(text)

    def watch(self, runner: Any) -> Any:
        """`runner`, whose runs show on the bar while they run (the same object when there is no bar)."""
        return _Watched(runner, self) if self.live else runner

    def close(self) -> None:
        """Stop the timer and close the bar."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.bar.close()

    def started(self, key: int, label: str) -> None:
        """A run began (shown from the next tick)."""
        with self._lock:
            self._running[key] = (label, time.monotonic())
            self._widest = max(self._widest, len(self._running))

    def ended(self, key: int) -> None:
        """A run ended."""
        with self._lock:
            run = self._running.pop(key, None)
            if run is not None:
                self._took.append(time.monotonic() - run[1])

    def running(self) -> str:
        """The runs in flight and their elapsed time: 'trial_0003 1:05, ref_baby 12s'."""
        now = time.monotonic()
        with self._lock:
            runs = sorted(self._running.values(), key=lambda r: r[1])
        return ", ".join(f"{label} {_elapsed(now - start)}" for label, start in runs)

    def _write(self, text: str) -> None:
        if self.live:  # above the bar, which tqdm redraws below the line
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def stopping_on(self, stop: threading.Event) -> None:
        """The event that stops the tuner: once set, the bar is closed on its own line, so that what the stopping
        prints ('still stopping: ...') starts a line of its own instead of being glued to the bar."""
        self._stopping = stop

    def progress(self) -> str:
        """What the bar says beside the count: the runs in flight, the runs done (references included) and, once
        one finished, the time left at the pace so far: 'running: trial_0003 5s; 2 runs done; ~1:20 left'."""
        now = time.monotonic()
        with self._lock:
            took, running, widest = list(self._took), [start for _, start in self._running.values()], self._widest
        parts = [f"running: {self.running()}"] if running else []
        if took:
            parts.append(f"{len(took)} run{'s' if len(took) > 1 else ''} done")
            mean = sum(took) / len(took)
            left = max(0, (self.bar.total or 0) - self.bar.n - len(running)) * mean
            left += sum(max(0.0, mean - (now - start)) for start in running)
            parts.append(f"~{_elapsed(left / widest)} left")
        return "; ".join(parts)

    def _tick(self) -> None:
        self._draw()  # from the first second: the count and the runs starting
        while not self._stop.wait(TICK_SECONDS):
            if self._stopping is not None and self._stopping.is_set():
                self._draw()
                self.bar.close()  # ends the bar's line: later lines start on their own
                return
            self._draw()

    def _draw(self) -> None:
        """Redraw the bar with the runs in flight; also moves its elapsed time on while no trial finishes."""
        now = self.progress()
        self.bar.set_description_str(f"tune ({now})" if now else "tune", refresh=False)
        self.bar.refresh()


class _Watched:
    """A trial runner whose runs the console shows while they run; anything else is the runner's own."""

    def __init__(self, runner: Any, console: Console) -> None:
        self._runner, self._console = runner, console

    def run(self, job: Any, *args: Any, **kwargs: Any) -> Any:
        """The runner's run(), on the bar while it runs (labelled by its log file: trial_0003, ref_baby)."""
        key = id(job)
        if isinstance(kwargs.get("stop"), threading.Event):
            self._console.stopping_on(kwargs["stop"])
        self._console.started(key, Path(job.log).stem)
        try:
            return self._runner.run(job, *args, **kwargs)
        finally:
            self._console.ended(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def _elapsed(seconds: float) -> str:
    """12s, 1:05, 1:02:03."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
