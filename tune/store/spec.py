"""What a --storage argument names: its kind, the URL or file to open, and the form fit to print (secrets masked);
one-line errors for a storage that will not open."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from gptcore.errors import UserError

JOURNAL_SUFFIXES = (".log", ".journal")


STORAGE_FORMS = "sqlite:///FILE, journal:PATH (or a path ending .log/.journal), or postgresql://USER:PASSWORD@HOST/DB"


PG_CONNECT_TIMEOUT_S = 10


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


def password_of(url: str) -> str | None:
    """The password in a URL, for scrubbing; None if it has none or does not parse."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


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


def connect_kwargs(spec: StorageSpec) -> dict[str, Any]:
    """Engine options: PostgreSQL gives up on an unreachable host after 10 s and checks pooled connections."""
    if spec.url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
    return {}
