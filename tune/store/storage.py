"""Where a study lives: which storage a --storage argument names, opening it safely (passwords never shown),
locks for several tuner processes on one study, its fingerprint, and trials a killed tuner left behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
from optuna.trial import FrozenTrial

from gptcore.errors import UserError

FINGERPRINT_KEYS = ("device_name", "gpu_memory_bytes", "cuda", "cuda_driver", "torch", "corpus", "dtype",
                    "budget", "objective", "space", "schedule", "threads_per_trial", "memory_limit")
JOURNAL_SUFFIXES = (".log", ".journal")
STORAGE_FORMS = "sqlite:///FILE, journal:PATH (or a path ending .log/.journal), or postgresql://USER:PASSWORD@HOST/DB"
# Tries and back-off for races between tuners that start at once on one database (table creation, study rows).
RACE_TRIES = 6
PG_CONNECT_TIMEOUT_S = 10

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class StorageSpec:
    """A resolved --storage: its kind, the URL or file to open, and `display`, the only form ever printed."""

    kind: str  # "sqlite" | "journal" | "rdb"
    url: str = field(repr=False)  # may carry a password: never print it, print `display`
    display: str
    path: Path | None = None  # the SQLite database or journal file; None for a server or an in-memory SQLite
    password: str | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.display


def _mask_raw(text: str) -> str:
    """Hide a `scheme://user:password@` password in text that may not parse as a URL."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def mask(url: str) -> str:
    """The URL with its password replaced by ***, fit to print."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: hide anything shaped like a password all the same
        return _mask_raw(url)


def scrub(text: str, spec: StorageSpec) -> str:
    """Error text from a driver or sqlalchemy with the storage's password removed, whatever form it took."""
    if spec.url:  # replace("", ...) would insert the display between every character
        text = text.replace(spec.url, spec.display)
    if spec.password:
        for form in {spec.password, quote(spec.password, safe=""), quote_plus(spec.password)}:
            text = text.replace(form, "***")
    return _mask_raw(text)


def resolve_storage(arg: str | None, default_sqlite: Path) -> StorageSpec:
    """What --storage names: None is the default SQLite file; journal:PATH or *.log/*.journal; a database URL."""
    if arg is None:
        path = default_sqlite.resolve()
        url = f"sqlite:///{path}"
        return StorageSpec("sqlite", url, url, path)
    arg = arg.strip()
    if arg.startswith("journal:") or ("://" not in arg and arg.endswith(JOURNAL_SUFFIXES)):
        raw = arg.removeprefix("journal:")
        if not raw:
            raise UserError(f"--storage {arg}: expected journal:PATH, the journal file to use")
        path = Path(raw).expanduser().resolve()
        if not path.parent.is_dir():
            raise UserError(f"--storage {arg}: folder {path.parent} does not exist")
        if path.is_dir():
            raise UserError(f"--storage {arg}: {path} is a folder; expected a journal file, e.g. {path}/study.journal")
        return StorageSpec("journal", str(path), f"journal:{path}", path)
    from sqlalchemy.engine import make_url

    try:
        url = make_url(arg)
    except Exception:
        raise UserError(f"--storage {_mask_raw(arg)}: not a storage URL; expected {STORAGE_FORMS}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, the `postgres` extra, is our driver
    full, display = url.render_as_string(hide_password=False), url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        database = url.database
        path = Path(database).resolve() if database and database != ":memory:" else None
        if path is not None and not path.parent.is_dir():
            raise UserError(f"--storage {display}: folder {path.parent} does not exist")
        return StorageSpec("sqlite", full, display, path, url.password)
    return StorageSpec("rdb", full, display, None, url.password)


def _driver_missing(spec: StorageSpec, exc: BaseException) -> UserError | None:
    """The one-line error for a database driver that is not installed, or None if exc is something else."""
    missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
    if not isinstance(missing, ModuleNotFoundError):
        return None
    module = (missing.name or "?").split(".")[0]
    if module.startswith("psycopg"):
        return UserError(f"--storage {spec.display}: the PostgreSQL driver psycopg is not installed; "
                         f"pip install -e '.[postgres]'")
    return UserError(f"--storage {spec.display}: its database driver, Python module {module!r}, is not installed")


def storage_error(spec: StorageSpec, exc: BaseException) -> UserError:
    """Any failure to open or use a storage as one password-free line."""
    import sqlalchemy.exc

    missing = _driver_missing(spec, exc)
    if missing is not None:
        return missing
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError):
        return UserError(f"--storage {spec.display}: unknown database kind; expected {STORAGE_FORMS}")
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0].strip() if text else type(orig).__name__
    if "password authentication failed" in text or "Access denied for user" in text:
        from sqlalchemy.engine import make_url

        user = make_url(spec.url).username
        return UserError(f"--storage {spec.display}: authentication failed for user {user!r}; check the password")
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return UserError(scrub(f"--storage {spec.display}: cannot connect ({first[:300]})", spec))
    return UserError(scrub(f"--storage {spec.display}: cannot open ({type(orig).__name__}: {first[:300]})", spec))


class JournalLeaseStorage(optuna.storages.JournalStorage):
    """Optuna's journal storage plus what liveness needs: Optuna 5 has no heartbeat for journals
    (tune.store.liveness)."""

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend, heartbeat_interval: int | None,
                 grace_period: int | None, on_stale: StaleCallback | None) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period if grace_period is not None or heartbeat_interval is None \
            else 2 * heartbeat_interval
        self.on_stale = on_stale


def _backoff(attempt: int) -> None:
    """Sleep a random, growing time so racing tuners stop colliding."""
    time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))


def _is_race(exc: BaseException) -> bool:
    """Whether exc is what two tuners creating the same tables or rows at once get (worth trying again)."""
    import sqlalchemy.exc

    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    return isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))


@contextlib.contextmanager
def _server_init_lock(spec: StorageSpec) -> Any:
    """Serialise table creation between tuners on one database server (an advisory lock; nothing for SQLite)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    backend = spec.url.split(":", 1)[0].split("+", 1)[0]
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    engine = sqlalchemy.create_engine(spec.url, poolclass=NullPool, **_connect_kwargs(spec))
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


def _connect_kwargs(spec: StorageSpec) -> dict[str, Any]:
    """Engine options: PostgreSQL gives up on an unreachable host after 10 s and checks pooled connections."""
    if spec.url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
    return {}


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


INIT_LOCK_KEY = _lock_key("tune: optuna table creation")


def make_storage(spec: StorageSpec, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 on_stale: StaleCallback | None = None) -> optuna.storages.BaseStorage:
    """Open the storage (creating its tables if new), with liveness settings; failures are one-line UserErrors."""
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        try:
            return JournalLeaseStorage(JournalFileBackend(spec.url), heartbeat_interval, grace_period, on_stale)
        except OSError as exc:
            raise UserError(f"--storage {spec.display}: cannot open ({exc.strerror or exc})") from None
        except Exception as exc:  # a file that is not a journal
            raise UserError(f"--storage {spec.display}: not an Optuna journal ({type(exc).__name__})") from None
    for attempt in range(RACE_TRIES):
        try:
            with _server_init_lock(spec), warnings.catch_warnings():
                # heartbeat_interval is "experimental" in Optuna 5: a warning per tuner start says nothing useful.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    spec.url, engine_kwargs=_connect_kwargs(spec), heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, heartbeat_stale_trial_callback=on_stale)
        except UserError:
            raise
        except Exception as exc:
            # Tuners started at once on an empty database race in CREATE TABLE (pg_type_typname_nsp_index) and in
            # the version row; the init lock serialises ours, this covers other clients (optuna-dashboard, older).
            if _is_race(exc) and attempt + 1 < RACE_TRIES:
                _backoff(attempt)
                continue
            raise storage_error(spec, exc) from None
    raise AssertionError("unreachable")


def open_study(name: str, storage: str | optuna.storages.BaseStorage, direction: str,
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               display: str | None = None) -> optuna.Study:
    """Create or load the study (a URL or a make_storage object); a failure is a one-line, password-free error."""
    shown = display or (mask(storage) if isinstance(storage, str) else type(storage).__name__)
    spec = StorageSpec("rdb", storage if isinstance(storage, str) else "", shown,
                       password=_password(storage) if isinstance(storage, str) else None)
    for attempt in range(RACE_TRIES):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                       pruner=pruner, load_if_exists=True)
        except ValueError as exc:
            if "direction" in str(exc):
                raise UserError(f"study {name!r} exists with another objective direction: {exc}") from None
            raise UserError(scrub(f"--storage {shown}: cannot open ({exc})", spec)) from None
        except Exception as exc:  # sqlalchemy, a missing DB driver, a bad URL: all mean "this storage won't do"
            if _is_race(exc) and attempt + 1 < RACE_TRIES:  # another tuner created the study at this moment
                _backoff(attempt)
                continue
            raise storage_error(spec, exc) from None
    raise AssertionError("unreachable")


def _password(url: str) -> str | None:
    """The password in a URL, for scrubbing; None if it has none or does not parse."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def sqlite_tables(path: Path) -> set[str]:
    """Table names in a SQLite file, opened read-only (never created or changed); sqlite3.Error if not one."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_sqlite_file(spec: StorageSpec, results_dir: Path) -> None:
    """Refuse a SQLite storage file that is not a database, or an empty one beside results it would overwrite."""
    path = spec.path if spec.kind == "sqlite" else None
    if path is None or not path.is_file():
        return
    if path.stat().st_size == 0:
        # SQLite leaves a 0-byte file when killed before its first write; fine for a new study, but never
        # beside the tables of one that existed: starting afresh would overwrite its trials.csv.
        if (results_dir / "trials.csv").exists():
            raise UserError(f"{path}: empty, but {results_dir / 'trials.csv'} holds an earlier study's results; "
                            f"restore the database or use another --study-name or --results")
        return
    try:
        sqlite_tables(path)
    except sqlite3.Error:
        raise UserError(f"{path}: not a SQLite database (a damaged or foreign file); move it away or use "
                        f"another --study-name or --results") from None


def study_file_problem(spec: StorageSpec) -> str | None:
    """Why a SQLite or journal file holds no study to read (None: it may, or the storage is a server).

    Optuna creates its tables (or an empty journal) in whatever it opens: a report, which only reads, must never
    turn a missing, empty or foreign file into a new storage.
    """
    if spec.kind == "journal":
        return None if spec.path and spec.path.is_file() else "no such journal file"
    path = spec.path if spec.kind == "sqlite" else None
    if path is None:
        return None
    if not path.is_file():
        return "no such SQLite file"
    try:
        tables = sqlite_tables(path)
    except sqlite3.Error as exc:
        return f"not a readable SQLite database ({exc})"
    return None if "studies" in tables else "holds no Optuna study"


def check_fingerprint(study: optuna.Study, fp: dict[str, Any]) -> None:
    """Refuse to mix trials from another device, corpus, precision, budget or objective."""
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fp)
        # Two tuners starting at once both find none and both write; the storage keeps one (Optuna drops the
        # loser's insert silently): read back what was kept and compare as if it had been there before.
        old = study._storage.get_study_user_attrs(study._study_id).get("fingerprint", fp)
    # A key missing from an old fingerprint was not recorded by the version that started the study: not a change.
    diff = [f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in FINGERPRINT_KEYS if old.get(k, fp.get(k)) != fp.get(k)]
    if diff:
        raise UserError(f"study {study.study_name!r} was run with other settings ({'; '.join(diff)}); "
                        f"use another --study-name")


def reference_study_name(name: str) -> str:
    """The companion study that holds a study's reference trials (presets), kept apart from the sampler."""
    return f"{name}:references"


def confirm_study_name(name: str) -> str:
    """The companion study that holds a study's confirmation runs (its best configurations again, fresh seeds)."""
    return f"{name}:confirm"


def load_references(study: optuna.Study) -> optuna.Study | None:
    """The reference study beside `study` in its storage, or None if it has none."""
    return _load_companion(study, reference_study_name(study.study_name))


def load_confirms(study: optuna.Study) -> optuna.Study | None:
    """The confirmation study beside `study` in its storage, or None if it has none."""
    return _load_companion(study, confirm_study_name(study.study_name))


def _load_companion(study: optuna.Study, name: str) -> optuna.Study | None:
    storage = study._storage  # Study has no public accessor for its storage object
    if name not in optuna.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


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
    engine = sqlalchemy.create_engine(spec.url, poolclass=NullPool, **_connect_kwargs(spec))
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


def study_lock(spec: StorageSpec, storage: optuna.storages.BaseStorage | None, study_name: str) -> StudyLock:
    """The cross-process lock for one study: flock on a sidecar for SQLite/journal, an advisory lock for a server.

    `storage` is unused today (the lock keeps its own connection, so a pooled storage connection is never pinned);
    it is accepted so callers need not change if a storage kind ever locks through its own object.
    """
    del storage
    digest = hashlib.blake2b(study_name.encode(), digest_size=6).hexdigest()
    if spec.kind in ("sqlite", "journal"):
        if spec.path is None:  # an in-memory SQLite: one process by definition, a thread lock is enough
            return StudyLock(spec.display, lambda: None, lambda: None, lambda: None)
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
