"""Writing result files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gptcore.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_replaceable(path: Path, marker: str, what: str) -> None:
    """Refuse to replace a folder that is neither empty nor an earlier result (which holds `marker`)."""
    if path.exists() and not (path / marker).exists() and any(path.iterdir()):
        raise UserError(f"{path}: exists and is not a {what}; refusing to replace it")


@contextlib.contextmanager
def atomic_dir(path: str | Path, marker: str, what: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path`.

    `path` must be absent, empty, or an earlier result (it holds `marker`): anything else is refused before
    any work is done. The earlier result is removed only once the new one is in place.
    """
    path = Path(path)
    check_replaceable(path, marker, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        check_replaceable(path, marker, what)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
