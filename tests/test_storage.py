"""Storages for many tuner processes: --storage resolution, password-free errors, start-up races, the study lock,
liveness (heartbeats and journal leases) and the one-tuner hold on SQLite - against real processes and a real
PostgreSQL server (TUNE_TEST_POSTGRES; see the postgres_db fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from gptcore.errors import UserError
from tune.store.liveness import GRACE_KEY, LEASE_KEY, beat, fail_stale
from tune.store.locks import hold_sqlite, study_lock
from tune.store.spec import StorageSpec, mask, resolve_storage, scrub
from tune.store.storage import check_fingerprint, make_storage, open_study

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-Pw"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spawn(code: str, *args: str, quiet: bool = True) -> subprocess.Popen:
    """A Python process running `code` from the repository root (so it imports this worktree's tune)."""
    action = "ignore" if quiet else "default"  # quiet: only the test's own output and tracebacks matter
    prelude = f"import sys, warnings; warnings.simplefilter({action!r}); import optuna; " \
              "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for a spawned process; it must exit 0 without a traceback. Returns its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return out


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 30) -> None:
    """Read the process's stdout until `expected` (a line) appears."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")
    raise AssertionError(f"no {expected!r} within {timeout} s")


def kill9(proc: subprocess.Popen) -> None:
    """kill -9, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


def with_password(url: str) -> str:
    """The same server and database as `url` with another (wrong) password."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def shared_spec(request, tmp_path) -> StorageSpec:
    """A storage of each kind several processes can reach (SQLite only for locks and liveness, one tuner)."""
    if request.param == "sqlite":
        return resolve_storage(None, tmp_path / "study.db")
    if request.param == "journal":
        return resolve_storage(f"journal:{tmp_path / 'study.journal'}", tmp_path / "unused.db")
    return resolve_storage(request.getfixturevalue("postgres_url"), tmp_path / "unused.db")


# --- resolve_storage, masking ------------------------------------------------------------------------------------


def test_resolve_default_and_sqlite(tmp_path):
    spec = resolve_storage(None, tmp_path / "a" / ".." / "study.db")
    assert (spec.kind, spec.path, spec.url) == ("sqlite", tmp_path / "study.db", f"sqlite:///{tmp_path}/study.db")
    spec = resolve_storage(f"sqlite:///{tmp_path}/x.db", tmp_path / "unused.db")
    assert (spec.kind, spec.path) == ("sqlite", tmp_path / "x.db")


@pytest.mark.parametrize("form", ["journal:{d}/s.journal", "journal:{d}/s.any", "{d}/s.log", "{d}/s.journal"])
def test_resolve_journal(tmp_path, form):
    spec = resolve_storage(form.format(d=tmp_path), tmp_path / "unused.db")
    assert spec.kind == "journal"
    assert spec.path == tmp_path / Path(form).name
    assert spec.display == f"journal:{spec.path}"


def test_resolve_journal_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage("runs.log", tmp_path / "unused.db").path == tmp_path / "runs.log"


@pytest.mark.parametrize("arg, expected", [
    ("journal:{d}/missing/s.journal", "--storage journal:{d}/missing/s.journal: folder {d}/missing does not exist"),
    ("{d}/missing/s.log", "--storage {d}/missing/s.log: folder {d}/missing does not exist"),
    ("journal:", "--storage journal:: expected journal:PATH"),
    ("study.db", "--storage study.db: not a storage URL"),
    ("postgresql://u:" + PASSWORD + "@host:port/db", "--storage postgresql://u:***@host:port/db: not a storage URL"),
])
def test_resolve_refuses(tmp_path, arg, expected):
    with pytest.raises(UserError) as err:
        resolve_storage(arg.format(d=tmp_path), tmp_path / "unused.db")
    assert str(err.value).startswith(expected.format(d=tmp_path))
    assert "\n" not in str(err.value) and PASSWORD not in str(err.value)
    assert not (tmp_path / "missing").exists()


def test_resolve_postgres_uses_psycopg_and_hides_password(tmp_path):
    spec = resolve_storage(f"postgresql://tune:{PASSWORD}@db.example:5432/tune", tmp_path / "unused.db")
    assert spec.kind == "rdb"
    assert spec.url == f"postgresql+psycopg://tune:{PASSWORD}@db.example:5432/tune"
    assert spec.display == "postgresql+psycopg://tune:***@db.example:5432/tune"
    for shown in (str(spec), repr(spec), spec.display, mask(spec.url)):
        assert PASSWORD not in shown
    # Another driver or database passes through unchanged.
    assert resolve_storage("postgresql+psycopg2://u@h/d", tmp_path).url == "postgresql+psycopg2://u@h/d"
    assert resolve_storage("mysql+pymysql://u:p@h/d", tmp_path).display == "mysql+pymysql://u:***@h/d"


def test_scrub_removes_every_form_of_the_password(tmp_path):
    pw = "p@ss word/1"
    from urllib.parse import quote

    spec = resolve_storage(f"postgresql://tune:{quote(pw, safe='')}@h/d", tmp_path)
    assert spec.secrets == (pw,)
    text = f"failed for {spec.url}: {pw} {quote(pw, safe='')} other://x:y@z"
    cleaned = scrub(text, spec)
    assert pw not in cleaned and quote(pw, safe="") not in cleaned and ":y@" not in cleaned
    assert spec.display in cleaned
    assert scrub("plain text", StorageSpec("rdb", "", "JournalLeaseStorage")) == "plain text"


# --- password-free errors ----------------------------------------------------------------------------------------


def storage_failure(url: str, tmp_path: Path) -> str:
    """The one-line UserError make_storage raises for `url` (it must raise one)."""
    spec = resolve_storage(url, tmp_path / "unused.db")
    with pytest.raises(UserError) as err:
        make_storage(spec, 1, 2, None)
    message = str(err.value)
    assert "\n" not in message and PASSWORD not in message, message
    return message


def test_unreachable_host(tmp_path):
    message = storage_failure(f"postgresql://tune:{PASSWORD}@127.0.0.1:1/tune", tmp_path)
    assert message.startswith("--storage postgresql+psycopg://tune:***@127.0.0.1:1/tune: cannot connect (")


def test_missing_driver(tmp_path):
    message = storage_failure(f"postgresql+pg8000://tune:{PASSWORD}@localhost/tune", tmp_path)
    assert message == ("--storage postgresql+pg8000://tune:***@localhost/tune: its database driver, "
                       "Python module 'pg8000', is not installed")


def test_missing_psycopg_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ModuleNotFoundError
    message = storage_failure(f"postgresql://tune:{PASSWORD}@localhost/tune", tmp_path)
    assert message.endswith("the PostgreSQL driver psycopg is not installed; pip install -e '.[postgres]'")


def test_unknown_dialect(tmp_path):
    message = storage_failure(f"nosuchdb://tune:{PASSWORD}@localhost/tune", tmp_path)
    assert message.startswith("--storage nosuchdb://tune:***@localhost/tune: unknown database kind")


def test_wrong_password(postgres_url, tmp_path):
    message = storage_failure(with_password(postgres_url), tmp_path)
    from sqlalchemy.engine import make_url

    shown = make_url(postgres_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=True)
    assert message == f"--storage {shown}: authentication failed for user 'tune'; check the password"


def test_open_study_with_a_url_hides_the_password(postgres_url, tmp_path):
    with pytest.raises(UserError) as err:
        open_study("s", with_password(postgres_url), "minimize", optuna.samplers.RandomSampler(),
                   optuna.pruners.NopPruner())
    assert PASSWORD not in str(err.value) and "authentication failed" in str(err.value)


def test_journal_in_a_folder_path_refused(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        resolve_storage(f"journal:{tmp_path}", tmp_path / "unused.db")


# --- tuners starting at once ----------------------------------------------------------------------------------------

CREATE = """
    import json, os, time
    from pathlib import Path
    from tune.store.spec import resolve_storage
    from tune.store.storage import check_fingerprint, make_storage, open_study
    url, barrier, me, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:  # both processes imported everything: now start together
        time.sleep(0.001)
    spec = resolve_storage(url, Path("unused.db"))
    storage = make_storage(spec, 1, 2, None)
    study = open_study(name, storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(),
                       spec.display)
    check_fingerprint(study, {"device_name": "cpu", "corpus": "c"})
    print(json.dumps({"study_id": study._study_id}))
"""


def start_two_at_once(url: str, tmp_path: Path, round_: int) -> None:
    """Two processes create the same study at the same moment: both succeed, on the same study."""
    barrier = tmp_path / f"barrier{round_}"
    barrier.mkdir()
    procs = [spawn(CREATE, url, str(barrier), str(i), "race") for i in range(2)]
    ids = {json.loads(finish(p))["study_id"] for p in procs}
    assert len(ids) == 1


def test_two_tuners_create_one_study_on_empty_postgres(postgres_db, tmp_path):
    for round_ in range(5):
        start_two_at_once(postgres_db(), tmp_path, round_)


def test_two_tuners_create_one_study_on_a_journal(tmp_path):
    for round_ in range(5):
        start_two_at_once(f"journal:{tmp_path}/s{round_}.journal", tmp_path, round_)


def test_fingerprint_written_by_a_racing_tuner_is_compared(tmp_path):
    # Two tuners both find no fingerprint and both write one; Optuna keeps the first insert and drops the other
    # silently. The loser must still compare its settings with what was kept.
    spec = resolve_storage(None, tmp_path / "s.db")
    study = open_study("s", make_storage(spec), "minimize", optuna.samplers.RandomSampler(),
                       optuna.pruners.NopPruner())
    real_set = study._storage.set_study_user_attr

    def lost_race(study_id, key, value):
        real_set(study_id, key, {"device_name": "gpu-a"})  # the other tuner's insert, which wins

    study._storage.set_study_user_attr = lost_race
    with pytest.raises(UserError, match="device_name: 'gpu-a' -> 'gpu-b'"):
        check_fingerprint(study, {"device_name": "gpu-b"})


# --- the study lock ----------------------------------------------------------------------------------------------

LOCKER = """
    import threading, time
    from pathlib import Path
    from tune.store.locks import study_lock
    from tune.store.spec import resolve_storage
    url, log, me, barrier = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    spec = resolve_storage(url, Path(sys.argv[5]))
    lock = study_lock(spec, "s")
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.001)

    def work(tag):
        for i in range(15):
            with lock:
                with lock:  # reentrant in one thread
                    for part in ("begin", "end"):
                        with open(log, "a") as f:
                            f.write(f"{tag} {part} {i}\\n")
                        time.sleep(0.002)

    threads = [threading.Thread(target=work, args=(f"{me}.{t}",)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lock.close()
"""

HOLDER = """
    import time
    from pathlib import Path
    from tune.store.locks import study_lock
    from tune.store.spec import resolve_storage
    spec = resolve_storage(sys.argv[1], Path(sys.argv[2]))
    lock = study_lock(spec, "s")
    lock.__enter__()
    print("held", flush=True)
    time.sleep(600)
"""


def storage_arg(spec: StorageSpec) -> str:
    """The --storage argument that resolves to spec again in another process."""
    return spec.display if spec.kind == "journal" else spec.url


def test_study_lock_excludes_across_processes_and_threads(shared_spec, tmp_path):
    log, barrier = tmp_path / "lock.log", tmp_path / "barrier"
    barrier.mkdir()
    default = str(shared_spec.path or tmp_path / "unused.db")
    procs = [spawn(LOCKER, storage_arg(shared_spec), str(log), str(i), str(barrier), default) for i in range(2)]
    for p in procs:
        finish(p)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 2 * 15 * 2
    for begin, end in zip(lines[::2], lines[1::2]):  # every begin is followed by its own end: no interleaving
        tag, part, i = begin.split()
        assert (part, end) == ("begin", f"{tag} end {i}"), lines


def test_study_lock_is_released_by_kill_9(shared_spec, tmp_path):
    default = str(shared_spec.path or tmp_path / "unused.db")
    holder = spawn(HOLDER, storage_arg(shared_spec), default)
    try:
        wait_for_line(holder, "held")
        lock = study_lock(shared_spec, "s")
        acquired = threading.Event()

        def take() -> None:
            with lock:
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not acquired.wait(0.5), "the lock was taken while another process held it"
        # Another study's lock is independent.
        with study_lock(shared_spec, "another study"):
            pass
    finally:
        kill9(holder)
    assert acquired.wait(30), "a killed holder's lock was never released"
    taker.join()
    lock.close()


# --- liveness ----------------------------------------------------------------------------------------------------

CHECKER = """
    import json, time
    from pathlib import Path
    from tune.store.liveness import fail_stale
    from tune.store.spec import resolve_storage
    from tune.store.storage import make_storage
    url, default, at, calls = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

    def on_stale(study, trial):
        with open(calls, "a") as f:
            f.write(f"{trial.number}\\n")

    storage = make_storage(resolve_storage(url, default), 1, 2, on_stale)
    study = optuna.load_study(study_name="live", storage=storage)
    while time.time() < at:  # both checkers call at the same moment, after the grace period
        time.sleep(0.001)
    print(json.dumps([t.number for t in fail_stale(study)]))
"""


def test_liveness_fails_a_silent_trial_once_and_never_a_beating_one(shared_spec, tmp_path):
    calls = tmp_path / "calls.txt"
    own_calls: list[int] = []
    storage = make_storage(shared_spec, 1, 2, lambda study, trial: own_calls.append(trial.number))
    study = open_study("live", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    alive, silent = study.ask(), study.ask()
    assert beat(storage, alive._trial_id) and beat(storage, silent._trial_id)
    stop = threading.Event()

    def keep_beating() -> None:
        while not stop.wait(0.5):
            assert beat(storage, alive._trial_id)

    beater = threading.Thread(target=keep_beating, daemon=True)
    beater.start()
    try:
        # Well inside the grace period nothing is stale.
        assert fail_stale(study) == []
        # SQLite's now() has whole seconds: 4.5 s after the last beat is past a 2 s grace on every storage.
        at = time.time() + 4.5
        default = str(shared_spec.path or tmp_path / "unused.db")
        checkers = [spawn(CHECKER, storage_arg(shared_spec), default, str(at), str(calls)) for _ in range(2)]
        failed = [json.loads(finish(p)) for p in checkers]
        assert sorted(failed, key=len) == [[], [silent.number]]  # exactly one of the two failed it
        assert calls.read_text().splitlines() == [str(silent.number)]  # its callback ran once
        assert fail_stale(study) == [] and own_calls == []  # nothing left to fail here either
    finally:
        stop.set()
        beater.join()
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {alive.number: optuna.trial.TrialState.RUNNING, silent.number: optuna.trial.TrialState.FAIL}
    assert study.trials[silent.number].datetime_complete is not None
    assert beat(storage, silent._trial_id) is False  # its tuner learns that the trial was failed under it
    assert beat(storage, alive._trial_id) is True


def test_a_trial_never_beaten_for_is_stale_after_the_grace_period(shared_spec, tmp_path):
    # A tuner killed between asking for a trial and its first beat: Optuna alone would keep it RUNNING forever.
    seen: list[int] = []
    storage = make_storage(shared_spec, 1, 2, lambda study, trial: seen.append(trial.number))
    study = open_study("n", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    never_beaten, beaten, patient = study.ask(), study.ask(), study.ask()
    assert beat(storage, beaten._trial_id) and beat(storage, patient._trial_id)
    # `patient`'s tuner promised a beat every 100 s: a tuner with a 2 s grace must judge it by that.
    storage.set_trial_system_attr(patient._trial_id, GRACE_KEY, 100)
    assert fail_stale(study) == []
    time.sleep(2.5)
    assert beat(storage, beaten._trial_id)  # still alive
    assert [t.number for t in fail_stale(study)] == [never_beaten.number] and seen == [never_beaten.number]


def test_journal_lease_falls_back_to_the_start_time(tmp_path):
    spec = resolve_storage(f"journal:{tmp_path}/s.journal", tmp_path / "unused.db")
    seen: list[int] = []
    storage = make_storage(spec, 1, 2, lambda study, trial: seen.append(trial.number))
    study = open_study("s", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    never_beaten = study.ask()
    beaten = study.ask()
    beat(storage, beaten._trial_id, now=time.time() + 3600)  # a lease far ahead: never stale in this test
    assert fail_stale(study) == []
    time.sleep(2.5)
    assert [t.number for t in fail_stale(study)] == [never_beaten.number] and seen == [never_beaten.number]
    assert LEASE_KEY in study.trials[beaten.number].system_attrs


def test_heartbeat_storage_asks_without_warnings(tmp_path):
    # A tuner asks for trials itself (no Study.optimize): Optuna's warnings about that must not reach its console
    # (the CLI's quiet_optuna).
    code = """
        from pathlib import Path
        from tune.store._optuna import quiet_optuna
        quiet_optuna()
        from tune.store.liveness import beat
        from tune.store.spec import resolve_storage
        from tune.store.storage import make_storage, open_study
        storage = make_storage(resolve_storage(None, Path(sys.argv[1])), 1, 2, None)
        study = open_study("s", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
        print(beat(storage, study.ask()._trial_id))
    """
    proc = spawn(code, str(tmp_path / "s.db"), quiet=False)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip(), err) == (0, "True", "")


def test_fail_stale_without_heartbeat_does_nothing(tmp_path):
    spec = resolve_storage(None, tmp_path / "s.db")
    study = open_study("s", make_storage(spec), "minimize", optuna.samplers.RandomSampler(),
                       optuna.pruners.NopPruner())
    study.ask()
    assert fail_stale(study) == []


# --- one tuner per SQLite file -----------------------------------------------------------------------------------

SQLITE_HOLDER = """
    import time
    from pathlib import Path
    from tune.store.locks import hold_sqlite
    from tune.store.spec import resolve_storage
    hold = hold_sqlite(resolve_storage(None, Path(sys.argv[1])))
    print("held", flush=True)
    time.sleep(600)
"""


def test_hold_sqlite_refuses_a_second_tuner_until_the_first_dies(tmp_path):
    spec = resolve_storage(None, tmp_path / "study.db")
    holder = spawn(SQLITE_HOLDER, str(tmp_path / "study.db"))
    try:
        wait_for_line(holder, "held")
        with pytest.raises(UserError) as err:
            hold_sqlite(spec)
        assert str(err.value) == (
            f"{tmp_path}/study.db: another tuner process is using this study; SQLite is for one tuner - for several "
            f"tuners on this machine use --storage journal:{tmp_path}/study.journal, for several machines "
            f"PostgreSQL (see README)")
    finally:
        kill9(holder)
    with hold_sqlite(spec) as hold:
        assert hold is not None
    assert hold_sqlite(resolve_storage(f"journal:{tmp_path}/s.journal", tmp_path)) is None
