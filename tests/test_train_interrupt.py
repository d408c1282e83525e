"""Ctrl-C in `python -m gptcore train`: the first saves the current step and exits 130; a second one aborts."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gptcore.__main__ import main
from gptcore.checkpoint import load_checkpoint
from gptcore.cliutil import run
from tests.conftest import CORPUS, ROOT

MAX_ITERS = 1_000_000  # never reached: every run here ends by Ctrl-C or by its own small --max-iters
TRAIN = ["--data", str(CORPUS), "--eval-interval", "5", "--no-progress"]
FRESH = [*TRAIN, "--preset", "tiny", "--device", "cpu"]

# The CLI with a hook that holds the checkpoint save at its first step, so a second Ctrl-C surely lands in it.
HELD_SAVE = """
import sys, time
from gptcore import files
def hold(step):
    if step == "dir:created":
        print("saving", file=sys.stderr, flush=True)
        time.sleep(300)
files.fault_hook = hold
from gptcore.__main__ import main
from gptcore.cliutil import run
run(main, sys.argv[1:], prog="python -m gptcore")
"""


class Cli:
    """The CLI in a subprocess whose output lines are read as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(s, sink), daemon=True)
                        for s, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self.readers:
            r.start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self.lines.put(line)

    def wait_for(self, text: str) -> None:
        """Block until a line containing `text` appears (bounded, so a broken run fails instead of hanging)."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.2):
                    return
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
        self.proc.kill()
        pytest.fail(f"never printed {text!r}; stderr: {''.join(self.err)[-2000:]}")

    def finish(self) -> int:
        code = self.proc.wait(timeout=180)
        for r in self.readers:
            r.join()
        return code


def gptcore(*argv: str) -> list[str]:
    return [sys.executable, "-m", "gptcore", *argv]


def test_first_ctrl_c_saves_the_current_step_and_resume_continues_from_it(tmp_path):
    out = tmp_path / "ck"
    cli = Cli(gptcore("train", "--out", str(out), *FRESH, "--max-iters", str(MAX_ITERS)))
    cli.wait_for("step 10: train loss")  # it has trained some steps
    cli.proc.send_signal(signal.SIGINT)
    assert cli.finish() == 130
    ckpt = load_checkpoint(out)
    assert 10 <= ckpt.step < MAX_ITERS
    err = "".join(cli.err)
    assert f"interrupted: checkpoint saved at step {ckpt.step}" in err and "Traceback" not in err
    # The optimizer state is that of the same step: Adam counted exactly ckpt.step updates.
    assert {float(s["step"]) for s in ckpt.optimizer_state["state"].values()} == {ckpt.step}
    resumed = subprocess.run(gptcore("train", "--out", str(out), "--resume", *TRAIN, "--max-iters",
                                     str(ckpt.step + 3)), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"3 steps (to step {ckpt.step + 3})" in resumed.stdout
    assert load_checkpoint(out).step == ckpt.step + 3


def test_second_ctrl_c_aborts_without_saving_and_keeps_the_old_checkpoint(tmp_path):
    out = tmp_path / "ck"
    with pytest.raises(SystemExit) as info:
        run(main, ["train", "--out", str(out), *FRESH, "--max-iters", "5"])
    assert info.value.code == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    cli = Cli([sys.executable, "-c", HELD_SAVE, "train", "--out", str(out), "--resume", *TRAIN,
               "--max-iters", str(MAX_ITERS)])
    cli.wait_for("step 10: train loss")
    cli.proc.send_signal(signal.SIGINT)
    cli.wait_for("saving")  # the first Ctrl-C stopped training; the save has begun
    cli.proc.send_signal(signal.SIGINT)
    assert cli.finish() == 130
    err = "".join(cli.err)
    assert "interrupted" in err and "Traceback" not in err and "checkpoint saved" not in err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the old checkpoint, untouched
    assert load_checkpoint(out).step == 5
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".ck.")]  # the half-save is gone
