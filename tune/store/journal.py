"""A journal file that a torn write never destroys.

Optuna's journal is one JSON record per line. A full disk or a killed write leaves a partial last line; Optuna's
reader skips it while it is last, but the next append lands after it and glues the two into one line that no
reader can parse - from then on the whole journal is "not an Optuna journal". So: a torn last line is moved aside
to FILE.torn (every complete record stays) when the journal is opened, and no append ever writes after one (one
that finds a torn end refuses; one that fails part-way cuts its own partial line off again).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from gptcore.errors import UserError
from gptcore.files import atomic_write

_CHUNK = 1 << 16  # bytes read at a time when looking back for the last line's start
_FIRST_LINE_MAX = 1 << 20  # bytes of the first line read to tell a journal (its first record is a short one)
_RECORD_START = b'{"op_code"'  # how Optuna's journal writes every record (JournalStorage's _create_operation_log)


@contextmanager
def _held(lock: JournalFileSymlinkLock) -> Iterator[None]:
    """Optuna's append lock on the journal, so no tuner appends while this one checks or repairs the end."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _last_line_start(f: Any, end: int) -> int:
    """The offset just after the last b"\\n" before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(_CHUNK, pos)
        f.seek(pos - step)
        cut = f.read(step).rfind(b"\n")
        if cut >= 0:
            return pos - step + cut + 1
        pos -= step
    return 0


def torn_tail(path: Path) -> int | None:
    """Where the journal's torn last line begins, or None when it ends with a complete record (or is empty).

    Torn: no final newline, or a last line that is not one JSON object (a partial write that a newline followed).
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) != b"\n":
            return _last_line_start(f, size)
        start = _last_line_start(f, size - 1)
        f.seek(start)
        line = f.read(size - start)
    try:
        ok = isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        ok = False
    return None if ok else start


def _aside(path: Path) -> Path:
    """A free name beside the journal for its torn tail: FILE.torn, else FILE.torn.2, .3, ..."""
    candidate, n = Path(f"{path}.torn"), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{path}.torn.{n}")
    return candidate


def repair(path: Path, display: str) -> Path | None:
    """Move a torn last line aside (the caller holds the append lock); the file it went to, or None if whole.

    The tail is written, synced and renamed into place before the journal is cut: a kill between the two leaves
    the tail in both, and the next open moves it again (to another name) - never lost, never half-moved.
    """
    start = torn_tail(path)
    if start is None:
        return None
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
    aside = _aside(path)
    try:
        atomic_write(aside, lambda tmp: tmp.write_bytes(tail))
        os.truncate(path, start)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{display}: its last line is torn ({len(tail)} bytes) and cannot be moved aside to "
                        f"{aside.name} ({exc.strerror or exc}); free space or fix permissions and run again") from None
    return aside


class GuardedJournalBackend(JournalFileBackend):
    """Optuna's journal file backend whose appends never follow a torn line and never leave one of their own."""

    def __init__(self, path: Path, display: str) -> None:
        self.lock = JournalFileSymlinkLock(str(path))
        super().__init__(str(path), lock_obj=self.lock)
        self.path, self.display = path, display

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append records as Optuna does (one JSON object a line, synced), under its lock, all or nothing."""
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with _held(self.lock):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                if end and os.pread(fd, 1, end - 1) != b"\n":  # the last byte says enough; torn_tail reads a line
                    raise UserError(f"{self.display}: its last line is torn (another writer ran out of space or "
                                    f"was killed); not appending after it - run again to move it aside")
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, end)  # e.g. a full disk: cut our partial line off, the journal ends whole
                    raise
            finally:
                os.close(fd)


def check_is_journal(path: Path, display: str) -> None:
    """Refuse, before anything touches it, a non-empty file whose first line is no journal record: a log or a
    database named by mistake would otherwise have its last line "repaired" away and records appended to it."""
    with open(path, "rb") as f:
        first = f.readline(_FIRST_LINE_MAX)
    if not first:
        return  # empty or new: Optuna writes the first record
    try:
        record = json.loads(first)
        ok = isinstance(record, dict) and "op_code" in record
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        # A first record torn by a killed write, or longer than the bound read, still starts as Optuna writes one.
        ok = not first.endswith(b"\n") and first.startswith(_RECORD_START)
    if not ok:
        raise UserError(f"{display}: not an Optuna journal (its first line is not a journal record); name a new "
                        f"file or an existing journal (the file was left as it was)")


def open_backend(path: Path, display: str) -> GuardedJournalBackend:
    """The journal's backend, its torn last line (if any) moved aside first and said so on stderr."""
    if path.is_file():
        check_is_journal(path, display)
    backend = GuardedJournalBackend(path, display)
    if torn_tail(path) is None:  # whole: no lock taken, so a read-only journal still opens for a report
        return backend
    with _held(backend.lock):  # another tuner may be appending: look again, under the lock, then repair
        aside = repair(path, display)
    if aside is not None:
        print(f"{display}: its last line was torn (a full disk or a killed write): moved it to {aside}; every "
              f"complete record is kept", file=sys.stderr)
    return backend
