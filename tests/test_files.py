"""Crash-safe files and folders: kill -9 at every step of a save and a prepare, leftovers, umask, output checks."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptcore import files
from gptcore.checkpoint import load_checkpoint
from gptcore.errors import UserError
from gptcore.files import atomic_dir, atomic_write_text, check_output_dir, pid_alive, recover
from gptcore.prepare import ensure_prepared, prepare
from tests.conftest import ROOT

# The child records the steps of a first write and of a replacing one (the hook marks each), then, for every
# step, forks a process that writes with a hook that SIGKILLs it at that step. `write(path, version)` is defined
# by the script's head. Forking one warm process keeps the many kills cheap (torch is imported once).
KILL_AT_EVERY_STEP = r"""
def kill_at(n):
    calls = []
    def hook(step):
        calls.append(step)
        if len(calls) == n + 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook

def record(path):
    steps = []
    files.fault_hook = steps.append
    write(path, 2)
    files.fault_hook = None
    return steps

write(work / "ref-1", 1)
write(work / "ref-2", 2)
first = record(work / "rec")  # nothing there yet
replace = record(work / "rec")  # replaces the one just written
cases = []
for scenario, steps in (("first", first), ("replace", replace)):
    for i, step in enumerate(steps):
        path = work / f"{scenario}-{i}"
        if scenario == "replace":
            write(path, 1)
        pid = os.fork()
        if pid == 0:
            try:
                files.fault_hook = kill_at(i)
                write(path, 2)
            finally:
                os._exit(0)  # not reached when the kill works
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        present = path.exists()
        cases.append(dict(scenario=scenario, index=i, step=step, path=str(path), killed=killed, present=present))
print(json.dumps({"first": first, "replace": replace, "cases": cases}))
"""

SAVE_HEAD = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # no OpenMP worker threads: forking below stays safe
from gptcore import files
from gptcore.checkpoint import save_checkpoint
from gptcore.config import from_name
from gptcore.model import build_model
from gptcore.tokenizer import CharTokenizer
from gptcore.train import configure_optimizer

work = Path(sys.argv[1])
tok = CharTokenizer("abcdefgh")
m, t = from_name("tiny", device="cpu")
m = m.with_vocab(tok.vocab_size)

def write(path, version):
    torch.manual_seed(version)  # each version its own weights, so a mix of two would show
    model = build_model(m)
    save_checkpoint(path, model, m, t, tok, optimizer=configure_optimizer(model, t, torch.device("cpu")),
                    step=version)
"""

PREPARE_HEAD = r"""
import json, os, signal, sys
from pathlib import Path
from gptcore import files
from gptcore.prepare import prepare

work = Path(sys.argv[1])

def write(path, version):
    src = work / f"v{version}.txt"
    src.write_text(f"version {version}: " + "the quick brown fox jumps. " * (10 + version))
    prepare(src, path, progress=False)
"""


def run_kills(head: str, work: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", head + KILL_AT_EVERY_STEP, str(work)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def expected_version(case: dict, run: dict) -> int | None:
    """2 once the kill came after the point where the new folder wins, else 1 (None: a first write, nothing)."""
    steps = run[case["scenario"]]
    # Replacing: the new folder wins once the old one has left its name; a first write: once it is committed.
    switch = steps.index("dir:old-moved" if case["scenario"] == "replace" else "dir:committed")
    if case["index"] >= switch:
        return 2
    return 1 if case["scenario"] == "replace" else None


def check_kill_run(run: dict, body_steps: set[str], load) -> None:
    swap = {"dir:created", "dir:written", "dir:synced", "dir:committed", "dir:replaced", "dir:done"}
    assert swap | body_steps <= set(run["first"]) and "dir:old-moved" not in run["first"]
    assert swap | body_steps | {"dir:old-moved"} <= set(run["replace"])
    assert len(run["cases"]) == len(run["first"]) + len(run["replace"])
    for case in run["cases"]:
        assert case["killed"], case
        path = Path(case["path"])
        if case["step"] == "dir:old-moved":
            assert not case["present"]  # the instant the earlier code lost the folder: recovery must bring it
        want = expected_version(case, run)
        if want is None:
            with pytest.raises(UserError, match="no such"):
                load(path)
        else:
            assert load(path) == want, case
        assert not leftovers(path), case  # the dead writer's partial, new or old folder is gone


def test_kill_9_at_every_step_of_a_checkpoint_save_leaves_old_or_new(tmp_path):
    run = run_kills(SAVE_HEAD, tmp_path)
    refs = {v: load_checkpoint(tmp_path / f"ref-{v}").model_state for v in (1, 2)}

    def load(path: Path) -> int:
        ckpt = load_checkpoint(path)
        # Every file of one version: the weights are those of the step state.json names, never a mix.
        assert ckpt.model_state.keys() == refs[ckpt.step].keys()
        assert all(torch.equal(ckpt.model_state[k], refs[ckpt.step][k]) for k in refs[ckpt.step])
        assert ckpt.optimizer_state is not None
        return ckpt.step

    check_kill_run(run, {"checkpoint:weights", "checkpoint:optimizer", "checkpoint:config", "checkpoint:vocab"},
                   load)


def test_kill_9_at_every_step_of_a_prepare_leaves_old_or_new(tmp_path):
    run = run_kills(PREPARE_HEAD, tmp_path)

    def load(path: Path) -> int:
        folder = ensure_prepared(path)
        meta = json.loads((folder / "meta.json").read_text())
        text = "".join(meta["tokenizer"]["chars"][i] for split in ("train", "val")
                       for i in np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]))
        version = int(text.split(":")[0].removeprefix("version "))
        assert text == (tmp_path / f"v{version}.txt").read_text()  # whole, and all of one version
        return version

    check_kill_run(run, {"prepare:allocated", "prepare:encoded"}, load)


def write_version(d: Path, version: int) -> None:
    (d / "data").write_text(str(version))
    (d / "done").write_text("")


def test_an_error_at_any_step_keeps_the_old_folder_whole(tmp_path, monkeypatch):
    path = tmp_path / "out"
    steps: list[str] = []
    with atomic_dir(path, "done", "result") as d:
        write_version(d, 1)
    monkeypatch.setattr(files, "fault_hook", steps.append)
    with atomic_dir(path, "done", "result") as d:
        write_version(d, 1)
    for i, step in enumerate(steps):
        calls = []

        def fail_at(name, i=i, calls=calls):
            calls.append(name)
            if len(calls) == i + 1:
                raise OSError(f"injected at {name}")

        monkeypatch.setattr(files, "fault_hook", fail_at)
        with pytest.raises(OSError, match="injected"), atomic_dir(path, "done", "result") as d:
            write_version(d, 2)
        want = "2" if i >= steps.index("dir:replaced") else "1"  # rolled back unless the swap was complete
        assert (path / "data").read_text() == want, step
        (path / "data").write_text("1")
        assert not leftovers(path), step


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_next_write_removes_dead_processes_leftovers_and_keeps_a_live_ones(tmp_path):
    path = tmp_path / "out"
    with atomic_dir(path, "done", "result") as d:
        write_version(d, 1)
    dead = dead_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = [tmp_path / f".out.partial-{dead}-abc", tmp_path / f".out.old-{dead}-abc",
                 tmp_path / f".out.new-{dead}-abc"]
        for s in stale:
            s.mkdir()
            write_version(s, 9)
        (tmp_path / f".out.partial-{dead}-xyz.tmp").write_text("a killed atomic_write")
        running = tmp_path / f".out.partial-{live.pid}-def"
        running.mkdir()
        assert not pid_alive(dead) and pid_alive(live.pid)
        with atomic_dir(path, "done", "result") as d:
            write_version(d, 2)
        assert leftovers(path) == [running.name]  # the live writer's folder is not touched
        assert (path / "data").read_text() == "2"
    finally:
        live.kill()
        live.wait()
    check_output_dir(path, "result", "done")  # the next run after its death removes it
    assert not leftovers(path)


def test_a_prepare_removes_the_partial_folder_of_a_killed_prepare(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    stale = tmp_path / f".p.partial-{dead_pid()}-q1"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 4096)
    prepare(src, tmp_path / "p", progress=False)
    assert not stale.exists() and (tmp_path / "p" / "meta.json").exists()


def test_leftovers_of_the_earlier_two_rename_swap_are_recovered(tmp_path):
    # What issue 7 found after a kill between the earlier code's two renames: no folder, only these two.
    old = tmp_path / f".ck.old-{dead_pid()}"
    old.mkdir()
    write_version(old, 1)
    legacy_partial = tmp_path / ".ck.partial-k2j4x9ab"  # mkdtemp's name carries no PID: whose it is is unknown
    legacy_partial.mkdir()
    recover(tmp_path / "ck", "done")
    assert (tmp_path / "ck" / "data").read_text() == "1"
    assert leftovers(tmp_path / "ck") == [legacy_partial.name]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_results_honour_the_umask(tmp_path, umask):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    previous = os.umask(umask)
    try:
        file = atomic_write_text(tmp_path / "r.txt", "x")
        with atomic_dir(tmp_path / "d", "done", "result") as d:
            write_version(d, 1)
        prepare(src, tmp_path / "p", progress=False)
    finally:
        os.umask(previous)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(file) == 0o666 & ~umask
    for folder in (tmp_path / "d", tmp_path / "p"):
        assert mode(folder) == 0o777 & ~umask
        assert {mode(f) for f in folder.iterdir()} == {0o666 & ~umask}


def test_check_output_dir_refuses_unusable_places_and_creates_nothing(tmp_path):
    (tmp_path / "f").write_text("a file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not a result")
    before = sorted(tmp_path.rglob("*"))
    for path, message in [
        (tmp_path / "f" / "x", "f is a file, not a folder; cannot create the result there"),
        (tmp_path / "f" / "x" / "y", "f is a file, not a folder"),
        (tmp_path / "f", "f: exists and is not a folder"),
        (foreign, "foreign: exists and is not a result; refusing to replace it"),
    ]:
        with pytest.raises(UserError, match=message):
            check_output_dir(path, "result", "done")
    check_output_dir(tmp_path / "a" / "b" / "c", "result", "done")  # absent: its parents can be created
    check_output_dir(foreign, "result", None)  # no marker: files go into the folder, any folder will do
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "result", "done")
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "empty"])


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat_line[stat_line.rindex(")") + 2:].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def test_prepare_pool_workers_end_when_prepare_is_killed(tmp_path):
    src = tmp_path / "shards"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        (src / f"{i}.txt").write_bytes(rng.integers(97, 123, 2_000_000, dtype=np.uint8).tobytes())
    proc = subprocess.Popen([sys.executable, "-m", "gptcore", "prepare", str(src), "--out", str(tmp_path / "out"),
                             "--workers", "2", "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = children(proc.pid)
            time.sleep(0.01)
        assert len(workers) >= 2, "prepare ended before its pool started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10  # a bound on the wait, not a timing: they end within a second or so
    while any(pid_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if pid_alive(w)]
