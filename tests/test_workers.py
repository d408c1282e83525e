"""Many workers and many tuner processes on one study: exact trial counts, retries, liveness, no orphans.

Every tuner here is a real `python -m tune` process on a real storage (SQLite, a journal file, PostgreSQL from
the `postgres_url` fixture); trials are tiny models with step budgets, so the tests check bookkeeping, not speed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.conftest import CORPUS, ROOT, ctrl_c_default, run_cli
from tests.test_tune import TINY_SPACE
from tune.core.outcomes import COUNTED

SPACE_FLAGS = [a for k, v in TINY_SPACE.items() for a in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]
# Any two cores this process may use (never assumed to be 0 and 1); the tests that pin two workers skip without them.
TWO_CORES = sorted(os.sched_getaffinity(0))[:2]
two_cores = pytest.mark.skipif(len(TWO_CORES) < 2, reason="needs two cores: one worker pinned to each")


def cores_flag() -> list[str]:
    """--cores with the two chosen cores: two workers then own one each, on a machine of any size."""
    return ["--cores", ",".join(map(str, TWO_CORES))]


def one_core_each() -> set[str]:
    """The worker names two workers on TWO_CORES carry."""
    return {f"cores {c}" for c in TWO_CORES}


def tune_cmd(results: Path, storage: str | None, trials: int, *extra: str, budget: str = "40steps") -> list[str]:
    """A tuner process on the tiny space, quick liveness settings, no references, no confirmation runs."""
    cmd = [sys.executable, "-m", "tune", "--trials", str(trials), "--budget", budget, "--references", "none",
           "--device", "cpu", "--data", str(CORPUS), "--results", str(results), "--study-name", "w", "--no-progress",
           "--heartbeat-interval", "1", "--grace-period", "4", "--confirm", "0", *SPACE_FLAGS, *extra]
    return cmd + (["--storage", storage] if storage else [])


def start(cmd: list[str], mark: str, log: Path) -> subprocess.Popen:
    """Start a tuner whose every descendant carries TUNE_TEST_MARK=mark in its environment."""
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "TUNE_TEST_MARK": mark},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def marked(mark: str) -> list[int]:
    """Live processes (not zombies) carrying this mark: a tuner's trial processes, forkserver, trackers."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"TUNE_TEST_MARK={mark}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(pid))
    return found


def wait_gone(mark: str, seconds: float) -> list[int]:
    """Wait until no process carries the mark; the ones left after `seconds`."""
    deadline = time.time() + seconds
    while marked(mark) and time.time() < deadline:
        time.sleep(0.2)
    return marked(mark)


def study_of(storage: str) -> optuna.Study:
    """The study as any reader sees it."""
    from tune.store.spec import resolve_storage
    from tune.store.storage import make_storage

    return optuna.load_study(study_name="w", storage=make_storage(resolve_storage(storage, Path("unused.db"))))


def check_books(study: optuna.Study, trials: int) -> None:
    """Exactly `trials` counted trials, unique numbers, nothing left running or queued."""
    states = [t.state for t in study.trials]
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == trials, [(t.number, t.state.name, t.user_attrs.get("status")) for t in study.trials]
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert all(t.user_attrs.get("status") in COUNTED for t in counted)


def run_two(results: Path, storage: str, trials: int, tmp_path: Path) -> list[str]:
    """Two tuner processes x 2 workers (on TWO_CORES) on one study, started at the same instant; their outputs."""
    cores = cores_flag()
    marks = [uuid.uuid4().hex for _ in range(2)]
    logs = [tmp_path / f"tuner{i}.log" for i in range(2)]
    procs = [start(tune_cmd(results / f"m{i}", storage, trials, "--workers", "2", *cores), marks[i], logs[i])
             for i in range(2)]
    for p in procs:
        p.wait(timeout=600)
    outs = [log.read_text() for log in logs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out, out
    for m in marks:
        assert wait_gone(m, 10) == []
    return outs


@pytest.fixture(scope="module")
def postgres_pair(tmp_path_factory, postgres_module_db) -> str:
    """Two tuners x 2 workers started at one instant on an empty PostgreSQL database, to 10 trials: its URL.

    One run checked by two tests (the books at the end; the race to create the tables, version row and study)."""
    url, tmp = postgres_module_db(), tmp_path_factory.mktemp("pg-pair")
    run_two(tmp, url, 10, tmp)
    return url


@pytest.mark.slow
@two_cores
def test_two_tuners_two_workers_on_postgres_end_with_exactly_n_trials(postgres_pair):
    study = study_of(postgres_pair)
    check_books(study, 10)
    hosts_pids = {t.user_attrs["tuner_pid"] for t in study.trials}
    assert len(hosts_pids) == 2  # both tuners did work
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert workers == one_core_each()  # each worker owned one of the two cores it was given


@pytest.mark.slow
@two_cores
def test_two_tuners_two_workers_on_a_journal_end_with_exactly_n_trials(tmp_path):
    storage = f"journal:{tmp_path / 'study.journal'}"
    run_two(tmp_path, storage, 8, tmp_path)
    check_books(study_of(storage), 8)


@pytest.mark.slow
@two_cores
def test_two_tuners_starting_at_once_on_an_empty_postgres_database(postgres_pair):
    # The storage's tables, its version row and the study are all created by whichever tuner comes first
    # (postgres_pair started both at one instant on an empty database).
    check_books(study_of(postgres_pair), 10)


@pytest.mark.slow
@two_cores
@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_a_killed_tuner_is_taken_over_its_trials_retried_and_nothing_is_left_running(tmp_path, backend, request):
    storage = (request.getfixturevalue("postgres_url") if backend == "postgres"
               else f"journal:{tmp_path / 'study.journal'}")
    trials = 4  # two per worker of the victim: some finished, some running when it dies, some never started
    victim_mark, other_mark = uuid.uuid4().hex, uuid.uuid4().hex
    # Long enough trials that the victim is surely mid-trial when it dies.
    victim = start(tune_cmd(tmp_path / "a", storage, trials, "--workers", "2", *cores_flag(), budget="600steps"),
                   victim_mark, tmp_path / "a.log")
    deadline = time.time() + 120
    running: list[optuna.trial.FrozenTrial] = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        with _quiet():
            try:
                running = [t for t in study_of(storage).get_trials(states=(TrialState.RUNNING,))
                           if t.user_attrs.get("tuner_pid") == victim.pid]
            except Exception:  # the study is not created yet
                running = []
    assert running, (tmp_path / "a.log").read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert wait_gone(victim_mark, 8) == [], "trial processes of the killed tuner still alive"
    stopped = study_of(storage).trials
    running = [t for t in stopped if t.state == TrialState.RUNNING and t.user_attrs.get("tuner_pid") == victim.pid]
    before = {t.number: (t.state, t.values) for t in stopped if t.state.is_finished()}
    other = start(tune_cmd(tmp_path / "b", storage, trials, "--workers", "2", *cores_flag(), budget="600steps"),
                  other_mark, tmp_path / "b.log")
    other.wait(timeout=600)
    out = (tmp_path / "b.log").read_text()
    assert other.returncode == 0 and "Traceback" not in out, out
    assert wait_gone(other_mark, 10) == []
    study = study_of(storage)
    check_books(study, trials)
    after = {t.number: t for t in study.trials}
    for number, (state, values) in before.items():  # every trial finished before the kill is intact
        assert (after[number].state, after[number].values) == (state, values)
    for t in running:  # the killed tuner's trials: failed as stale, queued again once with the same parameters
        dead = after[t.number]
        assert dead.state == TrialState.FAIL
        retries = [r for r in study.trials if r.system_attrs.get("retry_history") == [t.number]]
        assert len(retries) == 1 and retries[0].state != TrialState.FAIL
        # The same configuration (a trial killed mid-draw had some values only: its retry drew the rest).
        assert dead.params and dead.params.items() <= retries[0].params.items()
    df = pd.read_csv(tmp_path / "b" / "w" / "trials.csv")
    params = ["batch_size", "block_size", "n_embed", "n_head", "n_layer", "learning_rate"]
    # Every row shows its parameters. The one exception, by timing alone: a trial killed while its six values were
    # being drawn shows those drawn so far, perhaps none (Optuna stores them one by one); its retry draws the rest.
    assert df.loc[df["status"] != "interrupted", params].notna().all().all()
    # The killed tuner's trials read as interrupted (failed as stale), never as an error of their own.
    assert "interrupted" in set(df["status"]) and "error" not in set(df["status"])


def test_a_second_tuner_on_one_sqlite_file_is_told_to_use_a_journal(tmp_path):
    mark = uuid.uuid4().hex
    first = start(tune_cmd(tmp_path, None, 2, budget="100000steps"), mark, tmp_path / "first.log")
    try:
        db = tmp_path / "w" / "study.db"
        deadline = time.time() + 60
        while not (tmp_path / "w" / "logs" / "trial_0000.log").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(tune_cmd(tmp_path, None, 2), cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "journal" in lines[0] and str(db) in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert wait_gone(mark, 8) == []


def test_an_interrupted_trial_is_retried_and_trials_ends_with_n_counted(tmp_path):
    """Ctrl-C mid-trial, then resume: the interrupted trial runs again with its parameters; 3 counted trials."""
    results = tmp_path / "r"
    proc = subprocess.Popen(tune_cmd(results, None, 3, budget="1500steps"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_default)
    log = results / "w" / "logs" / "trial_0000.log"
    deadline = time.time() + 60
    while not log.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    resumed = subprocess.run(tune_cmd(results, None, 3, budget="1500steps"), cwd=ROOT, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    df = pd.read_csv(results / "w" / "trials.csv")
    assert df["status"].isin(COUNTED).sum() == 3 and len(df) == 4
    first, retry = df.iloc[0], df[df["retry_of"] == 0]
    assert first["status"] == "interrupted" and len(retry) == 1
    params = ["batch_size", "block_size", "n_embed", "n_head", "n_layer", "learning_rate"]
    assert (retry.iloc[0][params] == first[params]).all()
    summary = (results / "w" / "summary.md").read_text()
    assert "trials: 3 asked, 3 counted (" in summary and "; not counted: 1 interrupted, 1 retried with" in summary


def test_a_configuration_that_crashes_every_time_is_tried_twice_and_the_tuner_stops(tmp_path):
    from tests.test_tune import settings
    from tune.report.frame import trials_frame
    from tune.search.study import run_study

    out = run_study(settings(tmp_path, trials=2, study_name="boom"), target="tests.tune_faults:boom")
    df = trials_frame(out.study)
    # trial 0 errors, its retry (1) errors, a new configuration (2) errors: 3 in a row, the tuner stops; the
    # retry of 2 stays queued for a resume, and 0's configuration is not tried a third time.
    assert list(df["status"]) == ["error"] * 3 + ["queued"] and list(df["retry_of"].fillna(-1)) == [-1, 0, -1, 2]


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "argument --workers: expected a positive integer or auto, got '0'"),
    (["--workers", "-1"], "argument --workers: expected a positive integer or auto, got '-1'"),
    # One more worker than this process has cores, on a machine of any size.
    (["--workers", f"{len(os.sched_getaffinity(0)) + 1}"],
     f"--workers {len(os.sched_getaffinity(0)) + 1}: more workers than CPU cores"),
    (["--gpus", "0"], "--gpus 0: needs a CUDA device"),
    (["--gpus", "x"], "argument --gpus: expected indices like 0,2,3 or 0-3, got 'x'"),
    (["--cores", "999"], "--cores 999: core(s) 999 are not usable here"),
    (["--storage", "journal:/nonexistent-dir/s.journal"], "folder /nonexistent-dir does not exist"),
    (["--storage", "postgresql+psycopg://u:sekrit@127.0.0.1:1/db"], "cannot connect"),
    (["--storage", "postgresql+pg8000://u:sekrit@127.0.0.1/db"], "pg8000"),
    (["--grace-period", "5", "--heartbeat-interval", "5"], "--grace-period 5: must be longer"),
])
def test_bad_worker_and_storage_flags_are_one_line_exit_2_and_create_nothing(argv, needle, tmp_path, capfd,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process (tests/conftest.py run_cli)
    code, out, err = run_cli("tune", tune_cmd(tmp_path / "r", None, 1)[3:] + argv, capfd)  # less python -m tune
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "sekrit" not in err + out
    assert not (tmp_path / "r").exists()


@two_cores
def test_two_workers_on_the_cpu_own_one_core_each_and_the_table_says_so(tmp_path):
    proc = subprocess.run(tune_cmd(tmp_path, None, 4, "--workers", "2", *cores_flag()), cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "w" / "trials.csv")
    assert len(df) == 4 and set(df["worker"]) == one_core_each() and (df["threads"] == 1).all()
    assert not df["contended"].notna().any(), df[["worker", "contended"]]  # a sibling on the other core is no neighbour


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's warnings while polling a study another process is creating."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def test_slots_one_gpu_per_worker_equal_disjoint_cores_and_clear_errors(monkeypatch):
    from gptcore.errors import UserError
    from tune.exec import slots as slots_mod
    from tune.exec.slots import format_indices, plan_slots

    monkeypatch.setattr(slots_mod, "usable_cores", lambda: tuple(range(16)))
    cuda = {"device_type": "cuda", "gpus": [{"index": i} for i in range(4)]}
    auto = plan_slots(None, cuda)
    assert [s.gpu for s in auto] == [0, 1, 2, 3] and [s.cores for s in auto][1] == (4, 5, 6, 7)
    chosen = plan_slots(None, cuda, gpus=(0, 2, 3))
    assert [s.gpu for s in chosen] == [0, 2, 3] and all(len(s.cores) == 5 for s in chosen)
    assert chosen[1].describe() == "GPU 2 (cores 5-9)"
    with pytest.raises(UserError, match=r"--gpus 0,7: no GPU 7 on this machine \(visible: 0-3\)"):
        plan_slots(None, cuda, gpus=(0, 7))
    with pytest.raises(UserError, match="--workers 5: more workers than GPUs"):
        plan_slots(5, cuda)
    one = plan_slots(None, {**cuda, "device": "cuda:2"})  # --device cuda:2 trains on GPU 2, not GPU 0
    assert [s.gpu for s in one] == [2]
    with pytest.raises(UserError, match="choose the GPUs with --gpus"):
        plan_slots(None, {**cuda, "device": "cuda:2"}, gpus=(0, 1))
    cpu = {"device_type": "cpu"}
    assert plan_slots(None, cpu)[0].cores == tuple(range(16))  # auto on a CPU: one worker, every core
    three = plan_slots(3, cpu)  # 5 cores each; the 16th stays unused rather than make one worker faster
    assert [s.cores for s in three] == [tuple(range(0, 5)), tuple(range(5, 10)), tuple(range(10, 15))]
    assert plan_slots(2, cpu, cores=(8, 9, 10, 11))[1].describe() == "cores 10-11"
    with pytest.raises(UserError, match="--workers 17: more workers than CPU cores"):
        plan_slots(17, cpu)
    with pytest.raises(UserError, match="--gpus 0: needs a CUDA device"):
        plan_slots(1, cpu, gpus=(0,))
    with pytest.raises(UserError, match="--workers 2: an Apple GPU is one device"):
        plan_slots(2, {"device_type": "mps"})
    assert format_indices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_a_winner_trained_on_another_machine_is_named_not_copied(tmp_path):
    from tune.report.frame import keep_best_model

    row = pd.Series({"checkpoint": "/elsewhere/checkpoints/trial_0007", "host": "gpu-node-3"})
    note = keep_best_model(row, tmp_path)
    assert "not on this machine" in note and "gpu-node-3" in note and not (tmp_path / "best-model").exists()
