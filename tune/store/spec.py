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
# A URL's secrets: the password of `scheme://user:password@`, and the value of any query or DSN key naming one
# (password=, sslpassword=, passwd=, pwd=, token=, access_token=, secret=, api_key=, ...). A path such as
# passfile= is hidden too: hiding a harmless value is cheap, printing a secret is not.
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_SECRET_KEY = r"\w*(?:pass|pwd|token|secret|api_?key|credential)\w*"
_SECRET_VALUE = re.compile(rf"(?<![\w%])({_SECRET_KEY}\s*=\s*)[^&;\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class StorageSpec:
    """A resolved --storage: its kind, the URL or file to open, and `display`, the only form ever printed."""

    kind: str  # "sqlite" | "journal" | "rdb"
    url: str = field(repr=False)  # may carry secrets: never print it, print `display`
    display: str
    path: Path | None = None  # the SQLite database or journal file; None for a server
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)  # what scrub() removes from text

    def __str__(self) -> str:
        return self.display


def _mask_raw(text: str) -> str:
    """Hide every secret shaped like one (a URL's password, a `password=` value) in text that may not parse."""
    return _SECRET_VALUE.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def mask(url: str) -> str:
    """The URL with its password and secret query values replaced by ***, fit to print."""
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: hide anything shaped like a secret all the same
        shown = url
    return _mask_raw(shown)


def scrub(text: str, spec: StorageSpec) -> str:
    """Error text from a driver or sqlalchemy with the storage's secrets removed, whatever form they took."""
    if spec.url:  # replace("", ...) would insert the display between every character
        text = text.replace(spec.url, spec.display)
    for secret in spec.secrets:
        for form in sorted({secret, quote(secret, safe=""), quote_plus(secret)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return _mask_raw(text)


def secrets_of(url: str) -> tuple[str, ...]:
    """The secrets in a URL (its password, secret query values), for scrubbing; () if none or it does not parse."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return ()
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if re.fullmatch(_SECRET_KEY, key, re.IGNORECASE):
            found += [value] if isinstance(value, str) else list(value)  # a repeated key gives a tuple
    return tuple(v for v in found if v)


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
    full = url.render_as_string(hide_password=False)
    display = mask(full)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or ":memory:" in database or url.query.get("mode") == "memory":
            # Each connection to one gets a new, empty database: trial processes, other tuners and a later
            # report would each see nothing, and everything is gone when the tuner exits.
            raise UserError(f"--storage {display}: an in-memory SQLite database cannot be shared with trial "
                            f"processes nor read after the tuner exits; expected sqlite:///FILE")
        path = Path(database).resolve()
        if not path.parent.is_dir():
            raise UserError(f"--storage {display}: folder {path.parent} does not exist")
        if path.exists() and not path.is_file():  # SQLite would say only "unable to open database file"
            raise UserError(f"--storage {display}: {path} is not a regular file; expected a SQLite database file, "
                            f"e.g. sqlite:///{path}/study.db")
        return StorageSpec("sqlite", full, display, path, secrets_of(full))
    return StorageSpec("rdb", full, display, None, secrets_of(full))


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


def damaged_sqlite(path: Path, detail: str) -> UserError:
    """The one line for a SQLite file whose pages are damaged: what SQLite said, and the two ways on."""
    return UserError(f"{path}: damaged SQLite database ({detail.splitlines()[0][:120]}); recover its records with "
                     f"sqlite3 {path} \".recover\" | sqlite3 recovered.db, or keep studies in a journal "
                     f"(--storage journal:FILE), which a torn write does not damage")


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
    if spec.path is not None and isinstance(exc, sqlalchemy.exc.DatabaseError) \
            and not isinstance(exc, sqlalchemy.exc.OperationalError):  # "disk image is malformed", "not a database"
        return damaged_sqlite(spec.path, first)
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return UserError(scrub(f"--storage {spec.display}: cannot connect ({first[:300]})", spec))
    return UserError(scrub(f"--storage {spec.display}: cannot open ({type(orig).__name__}: {first[:300]})", spec))


def connect_kwargs(spec: StorageSpec) -> dict[str, Any]:
    """Engine options: PostgreSQL gives up on an unreachable host after 10 s and checks pooled connections."""
    if spec.url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
    return {}
