"""The trial process: owned cores or GPU, no orphans after the tuner dies, a runner shared by threads, contention."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests.conftest import cuda
from tune.core import trust
from tune.exec import health
from tune.exec.protocol import TrialJob
from tune.exec.runner import TrialRunner

ROOT = Path(__file__).resolve().parent.parent
CORES = sorted(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs two cores to pin two processes apart")

# A tuner-like parent: runs one trial through TrialRunner.run and prints a line per evaluation.
TUNER_SCRIPT = """
import json, sys
from tune.exec.protocol import TrialJob
from tune.exec.runner import TrialRunner


def on_eval(k, step, train_loss, val_loss):
    print("eval", k, flush=True)
    return False


if __name__ == "__main__":  # the trial process imports this module again (multiprocessing's spawn semantics)
    job, timeout = TrialJob(**json.loads(sys.argv[1])), float(sys.argv[2])
    run = TrialRunner().run(job, on_eval, timeout)
    print("ended", run.status, flush=True)
"""


@pytest.fixture(scope="module")
def runner() -> TrialRunner:
    return TrialRunner()


def make_job(prepared: Path, data, folder: Path, steps: int = 3, **extra) -> TrialJob:
    """A tiny trial: one layer, 32 wide, a step budget."""
    model = {"vocab_size": data.vocab_size, "block_size": 16, "n_embed": 32, "n_head": 2, "n_layer": 1,
             "dropout": 0.0}
    train = {"batch_size": 4, "max_iters": steps, "max_seconds": None, "eval_interval": 5, "eval_iters": 1,
             "device": "cpu"}
    return TrialJob(model=model, train=train, data=str(prepared), device="cpu",
                    log=str(folder / f"trial-{uuid.uuid4().hex[:8]}.log"), **extra)


def never_prune(*_args) -> bool:
    return False


def live_processes():
    """(pid, parent pid, /proc entry) of every live process (zombies are dead)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state != "Z":
            yield int(entry.name), int(ppid), entry


def marked(marker: str) -> dict[int, int]:
    """pid -> parent pid of every live process whose environment holds `marker`."""
    found = {}
    for pid, ppid, entry in live_processes():
        with contextlib.suppress(OSError):  # ended meanwhile, or not ours to read
            if marker.encode() in (entry / "environ").read_bytes():
                found[pid] = ppid
    return found


def wait_for(condition, seconds: float, step: float = 0.1):
    """condition()'s first true value within `seconds`, else its last value."""
    end = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def start_tuner(tmp_path: Path, job: TrialJob, timeout: float, marker: str) -> subprocess.Popen:
    """The tuner-like parent in its own process, with `marker` in its environment (its helpers inherit it).

    The trial evaluates once, early, and then not for hours, as a trial between rungs does: so the only thing
    that can end it is the guard under test, not a failed send to a dead tuner.
    """
    job = replace(job, train={**job.train, "eval_interval": 10**9}, eval_at=[1e-6])
    script = tmp_path / "tuner.py"
    script.write_text(TUNER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "W9_MARKER": marker}
    return subprocess.Popen([sys.executable, str(script), json.dumps(asdict(job)), str(timeout)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def first_eval(tuner: subprocess.Popen) -> str:
    """Read the tuner's output up to its first evaluation line (the trial is training then)."""
    seen = []
    for line in tuner.stdout:
        seen.append(line)
        if line.startswith("eval"):
            return line
    raise AssertionError(f"the tuner ended before any evaluation: {''.join(seen)[-2000:]}")


# --- owned cores, GPUs and the probe -----------------------------------------------------------------------------


def test_pinned_trial_runs_on_its_core_with_one_thread(runner, prepared, data, tmp_path):
    core = CORES[-1]
    run = runner.run(make_job(prepared, data, tmp_path, cores=[core]), never_prune, 120)
    assert run.status == "ok", run.message
    m = run.measure
    assert (m["cores"], m["threads"], m["cores_owned"]) == ([core], 1, True)
    assert (m["gpu_index"], m["gpu_uuid"]) == (None, None)
    # Unpinned, a trial keeps today's behaviour: every core this process may use, machine-wide measure.
    run = runner.run(make_job(prepared, data, tmp_path), never_prune, 120)
    assert run.status == "ok" and run.measure["cores"] == CORES and run.measure["cores_owned"] is False


def test_probe_lists_cores_and_no_gpus_on_the_cpu(runner):
    env = runner.probe("cpu")
    assert env["cores"] == CORES and env["gpus"] == [] and env["gpu_count"] == 0


def test_gpu_index_goes_through_the_tuners_own_selection(monkeypatch):
    from gptcore.errors import UserError
    from tune.exec.worker import select_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert select_gpu(1) == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(UserError, match="GPU 2: CUDA_VISIBLE_DEVICES='2,3' shows 2 GPU"):
        select_gpu(2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert select_gpu(5) == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert select_gpu(None) is None


@cuda
def test_trial_on_its_own_gpu_reports_that_gpu(runner, prepared, data, tmp_path):
    env = runner.probe("cuda")
    assert env["gpu_count"] == len(env["gpus"]) >= 1
    last = env["gpus"][-1]
    assert last["uuid"].startswith("GPU-") and last["memory_bytes"] > 0
    job = make_job(prepared, data, tmp_path, gpu=last["index"], memory_limit=2**30)
    job.device = job.train["device"] = "cuda"
    run = runner.run(job, never_prune, 300)
    assert run.status == "ok", run.message
    # The UUID ties the device the child trained on to the one the probe listed (CUDA renumbers it cuda:0).
    assert (run.measure["gpu_index"], run.measure["gpu_uuid"]) == (last["index"], last["uuid"])


# --- several threads, a stop event, the child's own deadline ------------------------------------------------------


def test_two_runs_at_once_from_two_threads_both_finish(runner, prepared, data, tmp_path):
    cores = [[CORES[0]], [CORES[1]]] if len(CORES) > 1 else [None, None]
    runs = {}

    def work(i: int) -> None:
        runs[i] = runner.run(make_job(prepared, data, tmp_path, steps=20, cores=cores[i]), never_prune, 120)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [runs[i].status for i in range(2)] == ["ok", "ok"], [runs[i].message for i in range(2)]
    assert all(runs[i].result["steps"] == 20 for i in range(2))
    if cores[0]:
        assert [runs[i].measure["cores"] for i in range(2)] == cores


def test_many_short_runs_from_threads_end_cleanly(runner, prepared, data, tmp_path):
    """Starts, exits and closes interleave across threads: no exception, every exit reported as it was."""
    runs, errors = [], []

    def work() -> None:
        try:
            for target in ("tests.tune_faults:boom", "tests.tune_faults:sigkill"):
                runs.append(runner.run(make_job(prepared, data, tmp_path, target=target), never_prune, 120))
        except BaseException as exc:  # surfaces in the assertion below, not as a silent dead thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(runs) == 8
    messages = sorted(r.message for r in runs)
    assert messages[:4] == ["ValueError: boom: injected failure"] * 4
    assert all(m.startswith("trial process died: SIGKILL") for m in messages[4:]), messages


def test_stop_event_interrupts_the_trial_promptly(runner, prepared, data, tmp_path):
    import multiprocessing.forkserver as fs

    stop = threading.Event()
    job = make_job(prepared, data, tmp_path, steps=10**7)
    evals = []

    def on_eval(k, *_):
        evals.append(k)
        if k == 2:  # training for sure: then the stop comes from another thread, as a worker slot's would
            threading.Timer(0.0, stop.set).start()
        return False

    before = set(_children(fs._forkserver._forkserver_pid))
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("run", runner.run(job, on_eval, 600, stop)))
    thread.start()
    assert wait_for(stop.is_set, 120), "the trial never reached its second evaluation"
    # A bound on the wait, not a timing: 10**7 steps would take hours, and the run's own timeout is 600 s.
    thread.join(30)
    assert not thread.is_alive(), "the run did not end after the stop"
    run = done["run"]
    assert run.status == "interrupted" and run.message == "stopped by the tuner"
    assert set(_children(fs._forkserver._forkserver_pid)) <= before  # the trial process is gone, not left over


def _children(pid: int | None) -> list[int]:
    """Live child processes of `pid`."""
    return [child for child, ppid, _ in live_processes() if ppid == pid]


def test_trial_that_outlives_its_deadline_ends_itself_as_a_timeout(runner, prepared, data, tmp_path):
    job = make_job(prepared, data, tmp_path, target="tests.tune_faults:hang", deadline_s=1.0)
    run = runner.run(job, never_prune, 30)  # the parent would kill it at 30 s: the child ends itself at 1 s
    assert run.status == "timeout" and run.message.startswith("ended itself"), run.message
    assert run.trial_seconds < 60
    assert "past its deadline" in Path(job.log).read_text()


# --- no orphans ----------------------------------------------------------------------------------------------------


def test_kill_9_of_the_tuner_leaves_no_process_behind(prepared, data, tmp_path):
    marker = f"w9-{uuid.uuid4().hex}"
    tuner = start_tuner(tmp_path, make_job(prepared, data, tmp_path, steps=10**7), 600, marker)
    try:
        first_eval(tuner)
        helpers = marked(marker)
        # The tuner, its forkserver and resource tracker, and the trial process (the forkserver's child).
        assert tuner.pid in helpers and len(helpers) >= 4, helpers
        tuner.kill()
        tuner.wait()
        # A bound on the wait, not a timing: without the guard the trial would train its 10**7 steps for hours.
        left = wait_for(lambda: not marked(marker), 10) or marked(marker)
        assert left is True, f"still running 10 s after kill -9 of the tuner: {left}"
    finally:
        _kill_all(tuner, marker)


def test_trial_ends_at_its_deadline_while_the_tuner_is_frozen(prepared, data, tmp_path):
    marker = f"w9-{uuid.uuid4().hex}"
    job = make_job(prepared, data, tmp_path, steps=10**7, deadline_s=4.0)
    tuner = start_tuner(tmp_path, job, 600, marker)
    try:
        first_eval(tuner)
        os.kill(tuner.pid, signal.SIGSTOP)
        helpers = marked(marker)
        trial = [pid for pid, ppid in helpers.items() if pid != tuner.pid and ppid != tuner.pid]
        assert len(trial) == 1, helpers  # the forkserver's child
        assert wait_for(lambda: trial[0] not in marked(marker), 15), "the trial outlived its deadline"
        assert tuner.poll() is None  # the tuner is still there, frozen: the trial ended by itself
        assert "past its deadline" in Path(job.log).read_text()
        tuner.kill()  # a frozen process dies of SIGKILL too: then its helpers go with it
        tuner.wait()
        assert wait_for(lambda: not marked(marker), 10), marked(marker)
    finally:
        _kill_all(tuner, marker)


def _kill_all(tuner: subprocess.Popen, marker: str) -> None:
    """Leave nothing running whatever a test found (each pid is one this test started, found by its marker)."""
    if tuner.poll() is None:
        tuner.kill()
        tuner.wait()
    for pid in marked(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- contention on owned cores -------------------------------------------------------------------------------------


def fake_stat(busy: dict[int, int], clock: int = 0) -> list[str]:
    """/proc/stat lines with `busy` user ticks per core (and the machine-wide sum)."""
    rows = [f"cpu{c} {ticks} 0 0 {clock} 0 0 0 0 0 0" for c, ticks in busy.items()]
    return [f"cpu {sum(busy.values())} 0 0 {clock * len(busy)} 0 0 0 0 0 0", *rows, "intr 1 2 3"]


def test_contention_counts_only_the_owned_cores_with_a_fake_proc_stat():
    tck = os.sysconf("SC_CLK_TCK")
    before, after = fake_stat({0: 100, 1: 100}), fake_stat({0: 100, 1: 100 + 5 * tck})  # core 1 was busy

    def meter(cores):
        reads, clock = iter([before, after]), iter([0.0, 1.0])  # one second between the two reads, no sleeping
        m = health.CpuMeter(len(cores) if cores else 2, cores, stat=lambda: next(reads), clock=lambda: next(clock))
        return m.start().stop()

    # The meter's process slept: give it a full share, so that only the cores decide.
    mine, theirs, machine = ({**meter(cores), "cpu_share": 1.0} for cores in ([0], [1], None))
    assert mine["others_cores"] == 0 and trust.contention(mine, "cpu") is None
    assert theirs["others_cores"] > 1 and "of its 1 own core(s) busy" in trust.contention(theirs, "cpu")
    # Not pinned: the cores this process may use, however many this machine has.
    assert machine["others_cores"] > 1 and f"of {len(CORES)} cores busy" in trust.contention(machine, "cpu")
    assert (mine["cores"], theirs["cores"], machine["cores_owned"]) == ([0], [1], False)
    assert health.busy_seconds([0, 1], after) == (200 + 5 * tck) / tck
    assert health.busy_seconds([7], after) is None  # a core /proc/stat does not show: unknown, not 0


def test_a_process_the_meter_s_process_started_counts_as_its_own_work_not_a_neighbour():
    # torch.compile's compile workers are children of the trial (or benchmark) process, on its cores: before this,
    # every compiled run was flagged contended by its own compiler. A child that burns CPU while alive (not yet
    # reaped) and one already reaped both count. CPU seconds, not wall time: the child loops until it has used
    # 0.3 s of CPU, however busy the machine.
    burn = "import time\nwhile time.process_time() < 0.3: pass"
    before = health.own_cpu_seconds()
    alive = subprocess.Popen([sys.executable, "-c", burn + "\nprint('burnt', flush=True)\ninput()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reaped = subprocess.run([sys.executable, "-c", burn])
    assert reaped.returncode == 0 and alive.stdout.readline() == "burnt\n"  # now idle, waiting on its stdin
    used = health.own_cpu_seconds() - before
    alive.communicate("\n")
    assert used >= 0.6 - 0.05  # both children's 0.3 s (less a clock tick each)


@two_cores
def test_busy_neighbour_flags_the_trial_on_its_core_only(runner, prepared, data, tmp_path):
    mine, other = CORES[0], CORES[1]
    # On a shared machine other processes come and go: the direction must hold on one of a few tries.
    outcomes = []
    for _ in range(3):
        flags = {}
        for where in (other, mine):
            hog = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, [{where}])\n"
                                    "while True: pass"])
            try:
                time.sleep(0.3)  # pinned and spinning
                job = make_job(prepared, data, tmp_path, steps=10**7, cores=[mine])
                job.train.update(max_iters=None, max_seconds=1.5)
                run = runner.run(job, never_prune, 120)
            finally:
                hog.kill()
                hog.wait()
            assert run.status == "ok", run.message
            flags[where] = trust.contention(run.measure, "cpu")
        outcomes.append(flags)
        if flags[other] is None and flags[mine] is not None:
            break
    assert flags[other] is None and flags[mine] is not None, outcomes
