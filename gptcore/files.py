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
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

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


def check_replaceable(path: Path, marker: str | None, what: str, owned: Collection[str] = ()) -> None:
    """Refuse a `path` that is not a folder, or (with `marker`) a folder that is neither empty nor a result.

    With `owned` (the names a result holds), a result that also holds anything else (a user's notes.txt) is
    refused too: replacing the folder would delete what the program did not write.
    """
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; cannot write the {what} there")
    if marker is None:
        return
    entries = sorted(os.listdir(path))
    if entries and marker not in entries:
        raise UserError(f"{path}: exists and is not a {what}; refusing to replace it")
    foreign = [name for name in entries if owned and name not in owned]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{path}: holds {shown}, which a {what} does not; refusing to replace the folder "
                        f"(move {'it' if len(foreign) == 1 else 'them'} away or choose another folder)")


def check_output_dir(path: str | Path, what: str, marker: str | None = None, owned: Collection[str] = ()) -> None:
    """Refuse, before any work, an output folder that cannot be written or must not be replaced.

    `path` may be absent (its missing parents are creatable), an empty folder, or an earlier result (a folder
    holding `marker` and nothing but `owned`, when given), which is replaced. With `marker` None files are written
    into the folder, so any existing folder will do. Nothing is created; an interrupted earlier write of `path` is
    recovered first.
    """
    path = Path(path)
    recover(path, marker)
    if os.path.lexists(path):
        check_replaceable(path, marker, what, owned)
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
def atomic_dir(path: str | Path, marker: str, what: str, owned: Collection[str] = (),
               need: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path` (see the module doc).

    `path` must be absent, empty, or an earlier result (it holds `marker`, and only names in `owned` when given):
    anything else is refused before any work is done. If the block or the swap fails, `path` keeps its earlier
    content; a failure for want of space is a one-line UserError naming the file and the space needed (`need`
    bytes, when the caller knows it; else at least what was written).
    """
    path = Path(path)
    check_output_dir(path, what, marker, owned)
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
        check_replaceable(path, marker, what, owned)  # again: something may have appeared there meanwhile
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
    except BaseException as exc:
        written = _apparent_size(new if os.path.lexists(new) else tmp)
        if replaced:
            _remove(old)
        else:  # put the earlier folder back under its name; drop everything of this attempt
            if moved and not os.path.lexists(path):
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            _remove(tmp)
            _remove(new)
        # A UserError is the block's own verdict (a corpus too small): never renamed a full disk.
        if (isinstance(exc, Exception) and not isinstance(exc, UserError)
                and disk_full(exc, path.parent, max(need or 0, written))):
            raise UserError(_no_space(exc, path, tmp, what, marker, need, written)) from None
        raise


def _apparent_size(folder: Path) -> int:
    """Bytes the files under `folder` claim (a preallocated file counts whole: what it will need)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _no_space(exc: BaseException, path: Path, tmp: Path, what: str, marker: str, need: int | None,
              written: int) -> str:
    """The one line for a result that did not fit: the file, the space needed and free, what is left."""
    # The file named is the one being written, under the name it was to have (not the temporary folder's, nor a
    # copy's source).
    failed = getattr(exc, "filename", None)
    try:
        file = path / Path(failed).relative_to(tmp) if failed else path
    except ValueError:
        file = path
    size = f"about {need / 2**20:.1f} MiB" if need else f"at least {written / 2**20:.1f} MiB"
    left = (f"{path} keeps its earlier {what}" if (path / marker).exists()
            else f"nothing was written to {path}")
    return (f"{file}: no space left on the device for the {what} (it needs {size}, {free_mib(path.parent)} "
            f"free); {left}")


# --- reading JSON that a user, a results folder or a checkpoint gave us: one reader, so one set of rules holds.

# The largest JSON a result holds is a BPE tokenizer.json: a few MB even for a large vocabulary. Beyond this a file
# is not one of ours, and reading it whole (a /dev/zero, a log renamed .json) would only exhaust memory.
JSON_MAX_BYTES = 64 * 2**20
# Real files nest 4 levels at most (a BPE tokenizer's merges); 100,000 levels would overflow the parser's stack.
JSON_MAX_DEPTH = 64


def _json_problem(value: Any) -> str | None:
    """Why a parsed JSON value cannot be used (too deep; a string UTF-8 cannot hold), or None."""
    stack = [(value, 1)]
    while stack:  # iterative: the value may be as deep as the parser allowed
        item, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            return f"JSON nested deeper than {JSON_MAX_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and not item.isascii():
            try:  # a lone surrogate escape (\ud800) parses, then fails wherever the text is written back
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"a string holds a lone surrogate {item[:40]!r}, which is not UTF-8 text"
    return None


def parse_json(text: str, where: str, expected: str) -> Any:
    """JSON text -> its value; a UserError `where: ...; expected <expected>` for text that is not JSON, is nested
    deeper than JSON_MAX_DEPTH, or holds a string that is not UTF-8 text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                        f"expected {expected}") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested deeper than {JSON_MAX_DEPTH} levels; expected {expected}") from None
    problem = _json_problem(value)
    if problem:
        raise UserError(f"{where}: {problem}; expected {expected}")
    return value


def _read_bounded(path: Path, where: str, expected: str, missing: str | None, max_bytes: int) -> bytes:
    """At most max_bytes of a file; UserError for a missing, folder, unreadable or larger file."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded: a device or a huge file is refused, not read whole
    except FileNotFoundError:
        raise UserError(f"{where}: {missing or f'no such file (expected {expected})'}") from None
    except IsADirectoryError:
        raise UserError(f"{where}: a folder; expected {expected}") from None
    except OSError as exc:
        raise UserError(f"{where}: unreadable ({exc.strerror or exc}); expected {expected}") from None
    if len(data) > max_bytes:
        size = f"{max_bytes // 2**20} MiB" if max_bytes % 2**20 == 0 else f"{max_bytes} bytes"
        raise UserError(f"{where}: larger than {size}; expected {expected}")
    return data


def read_json_object(path: str | Path, expected: str = "a JSON object", *, flag: str = "",
                     missing: str | None = None, max_bytes: int = JSON_MAX_BYTES) -> dict[str, Any]:
    """Read a JSON object from a file; every problem is a one-line UserError `[flag ]path: ...; expected ...`.

    Refused: a missing file (`missing` replaces the default wording), a folder, an unreadable file, one larger
    than max_bytes, text that is not UTF-8 or not JSON, JSON nested deeper than JSON_MAX_DEPTH, a lone surrogate,
    and any value but an object.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    raw = _read_bounded(path, where, expected, missing, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not JSON (not UTF-8 text at byte {exc.start}); "
                        f"expected {expected}") from None
    value = parse_json(text, where, expected)
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected {expected}, got a JSON {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- paths read from files (a meta.json's tokenizer file, a study's checkpoint folder) are input too: a crafted
# one must not make a command read, or copy, what lies outside the folder it belongs to.


def inside(root: str | Path, path: str | Path, what: str) -> Path:
    """`path` (relative paths are taken from `root`) resolved, symlinks followed; a UserError naming it and `root`
    unless it lies inside `root`."""
    root = Path(root)
    real, base = (root / path).resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise UserError(f"{root / path}: {what} points outside {root} (to {real}); expected a path inside it")
    return real


def contained_file(root: str | Path, name: str, what: str, max_bytes: int | None = None) -> Path:
    """The file `name` that a file of folder `root` names, resolved: a UserError unless it lies inside `root`, is
    a regular file (not a device, pipe or folder) and, with max_bytes, is at most that large."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{root}: {what} must be a file name, got {name!r}")
    real = inside(root, name, what)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise UserError(f"{Path(root) / name}: {what} is missing") from None
    except OSError as exc:
        raise UserError(f"{Path(root) / name}: {what} is unreadable ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{Path(root) / name}: {what} is not a regular file (a device, pipe or folder)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{Path(root) / name}: {what} is {st.st_size:,} bytes; at most {max_bytes:,} expected")
    return real


# --- a full disk: every writer reports it the same way (the file, the space needed, what is free).


def disk_full(exc: BaseException, folder: str | Path, need: int) -> bool:
    """Whether a failed write of `need` bytes into `folder` failed for want of space: ENOSPC/EDQUOT, or (for a
    library that reports it as another error: torch.save raises RuntimeError) less than `need` free there."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < need
    except OSError:
        return False


def free_mib(folder: str | Path) -> str:
    """'12.3 MiB' free on the device holding `folder` ('unknown' when it cannot be asked)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "an unknown amount"


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
