"""Locks between tuner processes: one study's critical section (study_lock), table creation on a database server
(server_init_lock), and the one tuner a SQLite file allows (hold_sqlite). Each is freed by the kernel or the
server when its process dies."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from gptcore.errors import UserError
from tune.store.spec import StorageSpec, connect_kwargs, storage_error


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


INIT_LOCK_KEY = _lock_key("tune: optuna table creation")


@contextlib.contextmanager
def server_init_lock(spec: StorageSpec) -> Any:
    """Serialise table creation between tuners on one database server (an advisory lock; nothing for SQLite)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    backend = spec.url.split(":", 1)[0].split("+", 1)[0]
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    engine = sqlalchemy.create_engine(spec.url, poolclass=NullPool, **connect_kwargs(spec))
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": INIT_LOCK_KEY})
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 120)"), {"k": "tune-optuna-init"})
            try:
                yield
            finally:  # the server also drops the lock when this connection closes, e.g. on kill -9
                if backend == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": INIT_LOCK_KEY})
                else:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": "tune-optuna-init"})
    finally:
        engine.dispose()


class StudyLock:
    """One study's critical section across threads, processes and machines (see study_lock); reentrant per thread.

    Held only around short steps (fail stale trials, count, ask or pop a retry): a tuner that dies inside it
    releases it with its process (flock) or its connection (PostgreSQL, MySQL).
    """

    def __init__(self, display: str, acquire: Callable[[], None], release: Callable[[], None],
                 close: Callable[[], None]) -> None:
        self.display = display
        self._acquire, self._release, self._close = acquire, release, close
        self._thread_lock = threading.RLock()  # threads of this process queue here; one of them holds the OS lock
        self._depth = 0

    def __enter__(self) -> StudyLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release()
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        """Free the lock's file or connection (the process's exit does the same)."""
        with self._thread_lock:
            self._close()


def _flock_lock(path: Path, display: str) -> StudyLock:
    """A StudyLock on an exclusive flock of a sidecar file (works across processes and on NFSv4 / Lustre)."""
    fd: list[int] = []

    def acquire() -> None:
        if not fd:
            try:  # O_CLOEXEC (Python's default): a trial process never inherits, so never holds, the lock
                fd.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
            except OSError as exc:
                raise UserError(f"{path}: cannot create the study's lock file ({exc.strerror})") from None
        fcntl.flock(fd[0], fcntl.LOCK_EX)

    def release() -> None:
        fcntl.flock(fd[0], fcntl.LOCK_UN)

    def close() -> None:
        if fd:
            os.close(fd.pop())

    return StudyLock(display, acquire, release, close)


def _server_lock(spec: StorageSpec, study_name: str) -> StudyLock:
    """A StudyLock on a PostgreSQL advisory lock / MySQL named lock, on one connection this process keeps."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    postgres = spec.url.startswith("postgresql")
    if postgres:
        key: Any = _lock_key(f"tune study {study_name}")
        lock_sql, unlock_sql = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
    else:  # MySQL / MariaDB: GET_LOCK names are at most 64 characters
        key = "tune-" + hashlib.blake2b(study_name.encode(), digest_size=16).hexdigest()
        lock_sql, unlock_sql = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
    engine = sqlalchemy.create_engine(spec.url, poolclass=NullPool, **connect_kwargs(spec))
    conn: list[Any] = []

    def connect() -> Any:
        c = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if postgres:
            # The server frees a session's advisory locks when the session ends; these make it notice within
            # ~25 s that a machine vanished (power loss, cable) instead of after the OS default of 2 hours.
            for setting, value in (("tcp_keepalives_idle", 10), ("tcp_keepalives_interval", 5),
                                   ("tcp_keepalives_count", 3)):
                c.execute(sqlalchemy.text(f"SET {setting} = {value}"))
        return c

    def acquire() -> None:
        for attempt in range(2):
            try:
                if not conn:
                    conn.append(connect())
                conn[0].execute(sqlalchemy.text(lock_sql), {"k": key})
                return
            except sqlalchemy.exc.DBAPIError as exc:
                # A dropped connection (server restart) held no lock any more: reconnect once, then give up.
                close()
                if attempt == 1 or not isinstance(exc, sqlalchemy.exc.OperationalError):
                    raise storage_error(spec, exc) from None

    def release() -> None:
        try:
            conn[0].execute(sqlalchemy.text(unlock_sql), {"k": key})
        except sqlalchemy.exc.DBAPIError:
            close()  # the connection is gone, and with it the lock

    def close() -> None:
        while conn:
            with contextlib.suppress(Exception):
                conn.pop().close()

    return StudyLock(f"{spec.display} (study {study_name})", acquire, release, close)


def study_lock(spec: StorageSpec, study_name: str) -> StudyLock:
    """The cross-process lock for one study: flock on a sidecar for SQLite/journal, an advisory lock for a server
    (on a connection of its own, so a pooled storage connection is never pinned)."""
    digest = hashlib.blake2b(study_name.encode(), digest_size=6).hexdigest()
    if spec.kind in ("sqlite", "journal"):
        # Not PATH.lock: Optuna's journal already uses that name for its own append lock.
        return _flock_lock(Path(f"{spec.path}.lock-{digest}"), spec.display)
    backend = spec.url.split(":", 1)[0].split("+", 1)[0]
    if backend in ("postgresql", "mysql", "mariadb"):
        return _server_lock(spec, study_name)
    raise UserError(f"--storage {spec.display}: several tuners on one study need SQLite (one tuner), a journal, "
                    f"PostgreSQL or MySQL")


class SqliteHold:
    """Proof that this process is the one tuner on a SQLite study file; the kernel frees it when the process dies."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def close(self) -> None:
        """Let another tuner use the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SqliteHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hold_sqlite(spec: StorageSpec) -> SqliteHold | None:
    """Claim a SQLite study file for this tuner process (keep the handle alive); None for other storages."""
    if spec.kind != "sqlite" or spec.path is None:
        return None
    sidecar = Path(f"{spec.path}.tuner")
    try:  # O_CLOEXEC by default: trial processes do not inherit the hold and cannot outlive it holding it
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"{spec.path}: cannot create {sidecar.name} beside it ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{spec.path}: another tuner process is using this study; SQLite is for one tuner - for "
                        f"several tuners on this machine use --storage journal:{spec.path.parent}/study.journal, "
                        f"for several machines PostgreSQL (see README)") from None
    return SqliteHold(spec.path, fd)
