"""Writing result files and folders so that no interruption, kill -9 or power cut included, loses or mixes one.

A file (`atomic_write`) is written beside its target, fsync'd and renamed over it: rename(2) is atomic, so a
reader sees the old file or the new one, never a part.

A folder (`atomic_dir`: checkpoints, prepared data) cannot be renamed over a non-empty folder, so replacing one
takes two renames. Every state in between is made recognisable by the names of the folders, and the next load
or save of NAME finishes or undoes an interrupted one (`recover`). The steps, and what a kill after each leaves:

    step            on disk after it (beside NAME)                   after a kill here, recovery gives
    created         .NAME.partial-PID-R, being written                the old NAME (the partial is removed)
    written/synced  .NAME.partial-PID-R complete, files fsync'd       the old NAME (the partial is removed)
    committed       .NAME.new-PID-R (renamed: the commit point)       the old NAME (the new one is removed)
    old-moved       no NAME; .NAME.old-PID-R and .NAME.new-PID-R      the new one, renamed to NAME
    replaced        NAME (new); .NAME.old-PID-R                       the new NAME (the old one is removed)
    done            NAME (new)

A `.new-` folder is complete by construction (its files were fsync'd before the rename that named it) and an
`.old-` folder was NAME until the rename that moved it, so when NAME is missing the newest `.new-` (else
`.old-`) folder becomes NAME again. Leftovers belong to the process whose PID is in their name and are touched
only once that process is dead: a save running in parallel is never disturbed, and a dead one's partial folder
(which can be hundreds of MB) is removed by the next run. Each rename is followed by an fsync of the parent
folder, so the order of the steps also survives a power cut.

Results honour the umask: mkstemp and mkdtemp create 0600 files and 0700 folders (and so does safetensors for
its files), so every file and folder of a result is given the mode an ordinary open() or mkdir() would give.

`fault_point(step)` marks each step; tests set `fault_hook` to kill the process there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gptcore.errors import UserError

# Tests set this to a function of the step name that kills or fails the process at that step.
fault_hook: Callable[[str], None] | None = None

_LEFTOVER = re.compile(r"(?P<kind>partial|new|old)-(?P<pid>\d+)(?:-.*)?", re.DOTALL)


def fault_point(step: str) -> None:
    """Mark a step of a multi-step write: calls `fault_hook(step)` when a test has set one."""
    if fault_hook is not None:
        fault_hook(step)


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux shows it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and put it back
    os.umask(mask)
    return mask


def _fsync(path: str | Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # folders cannot be opened on some systems; nothing to sync there
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on a folder; a file's failure is real
            raise
    finally:
        os.close(fd)


def _settle_tree(root: Path) -> None:
    """Give every file and folder under `root` the umask's mode, and fsync them (files first, then folders)."""
    mask = _umask()
    for folder, _, names in os.walk(root):
        for name in names:
            file = os.path.join(folder, name)
            os.chmod(file, 0o666 & ~mask)
            _fsync(file)
        os.chmod(folder, 0o777 & ~mask)
        _fsync(folder, directory=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (unknown counts as running: its files are left alone)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    try:  # a killed process nobody has reaped yet is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _leftovers(path: Path) -> list[tuple[str, int, Path]]:
    """(kind, pid, entry) for each `.NAME.{partial,new,old}-PID...` beside `path`."""
    prefix = f".{path.name}."
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return []
    found = []
    for entry in entries:
        m = _LEFTOVER.fullmatch(entry[len(prefix):]) if entry.startswith(prefix) else None
        if m:
            found.append((m["kind"], int(m["pid"]), path.parent / entry))
    return found


def recover(path: str | Path, marker: str | None = None) -> None:
    """Finish or undo an interrupted atomic write of `path` by a dead process; remove dead processes' leftovers.

    If `path` is missing, the newest complete `.new-` (else `.old-`) folder of a dead process (one that holds
    `marker`, when given) is renamed back to it. A live writer caught between its two renames is waited for.
    """
    path = Path(path)
    for _ in range(200):  # a live writer's two renames take microseconds; never wait more than ~2 s
        if os.path.lexists(path):
            break
        found = _leftovers(path)
        ready = [(kind, pid, p) for kind, pid, p in found
                 if kind in ("new", "old") and (marker is None or (p / marker).exists())]
        dead = [(kind, p) for kind, pid, p in ready if not pid_alive(pid)]
        if dead:
            newest = max(dead, key=lambda kp: (kp[0] == "new", _mtime(kp[1] / marker if marker else kp[1])))[1]
            with contextlib.suppress(OSError):  # another process may be recovering it at the same moment
                os.replace(newest, path)
                _fsync(path.parent, directory=True)
            continue
        if not ready:
            break
        time.sleep(0.01)
    have_path = os.path.lexists(path)
    for kind, pid, entry in _leftovers(path):
        # A dead process's partial is garbage; its new/old folders only once `path` exists again.
        if (kind == "partial" or have_path) and not pid_alive(pid):
            _remove(entry)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(Path(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_replaceable(path: Path, marker: str | None, what: str) -> None:
    """Refuse a `path` that is not a folder, or (with `marker`) a folder that is neither empty nor a result."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; cannot write the {what} there")
    if marker is not None and not (path / marker).exists() and any(path.iterdir()):
        raise UserError(f"{path}: exists and is not a {what}; refusing to replace it")


def check_output_dir(path: str | Path, what: str, marker: str | None = None) -> None:
    """Refuse, before any work, an output folder that cannot be written or must not be replaced.

    `path` may be absent (its missing parents are creatable), an empty folder, or an earlier result (a folder
    holding `marker`), which is replaced. With `marker` None files are written into the folder, so any existing
    folder will do. Nothing is created; an interrupted earlier write of `path` is recovered first.
    """
    path = Path(path)
    recover(path, marker)
    if os.path.lexists(path):
        check_replaceable(path, marker, what)
        # Replacing a folder renames it, which needs its parent to be writable; adding files needs the folder.
        writable = path.parent if marker is not None else path
    else:
        writable = path.parent
        while not os.path.lexists(writable) and writable != writable.parent:
            writable = writable.parent
        if not writable.is_dir():
            raise UserError(f"{path}: {writable} is a file, not a folder; cannot create the {what} there")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {writable} is not writable; cannot write the {what} there")


@contextlib.contextmanager
def atomic_dir(path: str | Path, marker: str, what: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path` (see the module doc).

    `path` must be absent, empty, or an earlier result (it holds `marker`): anything else is refused before
    any work is done. If the block or the swap fails, `path` keeps its earlier content.
    """
    path = Path(path)
    check_output_dir(path, what, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    tag = tmp.name.rsplit(".partial-", 1)[1]  # "PID-random": the same owner for all three names
    new, old = path.with_name(f".{path.name}.new-{tag}"), path.with_name(f".{path.name}.old-{tag}")
    moved = replaced = False
    try:
        fault_point("dir:created")
        yield tmp
        fault_point("dir:written")
        _settle_tree(tmp)
        fault_point("dir:synced")
        check_replaceable(path, marker, what)  # again: something may have appeared there meanwhile
        os.replace(tmp, new)
        _fsync(path.parent, directory=True)
        fault_point("dir:committed")
        if os.path.lexists(path):
            os.replace(path, old)
            moved = True
            _fsync(path.parent, directory=True)
            fault_point("dir:old-moved")
        os.replace(new, path)
        replaced = True
        _fsync(path.parent, directory=True)
        fault_point("dir:replaced")
        _remove(old)
        fault_point("dir:done")
    except BaseException:
        if replaced:
            _remove(old)
        else:  # put the earlier folder back under its name; drop everything of this attempt
            if moved and not os.path.lexists(path):
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            _remove(tmp)
            _remove(new)
        raise


def check_room(folder: str | Path, what: str, need: int = 0) -> None:
    """Refuse, before any work, a folder the `what` cannot be written into (check_output_dir) or whose disk has
    less than `need` bytes free: one line naming the folder and the space needed. Nothing is created."""
    folder = Path(folder)
    check_output_dir(folder, what)
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))  # "." ends a relative path
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(f"{folder}: only {free / 2**20:,.1f} MiB free on its disk, {need / 2**20:,.0f} MiB "
                        f"needed for the {what}")
