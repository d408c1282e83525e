"""Defects of the storage layer (issue #24, storage side), each pinned by a test that failed before its fix.

Bad input must end in one line naming the value and the rule, exit 2, no traceback, nothing created or left behind.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT


def tree(folder: Path) -> dict[str, int]:
    """Every path under `folder` -> its size (-1 for a folder): what a refused command must leave unchanged."""
    return {str(p.relative_to(folder)): -1 if p.is_dir() else p.stat().st_size for p in folder.rglob("*")}


def tune_cli(*argv: str, cwd: Path, capsys) -> tuple[int, str]:
    """`python -m tune ARGV` in-process from `cwd`: its exit code and its stderr."""
    import os

    from gptcore.cliutil import run
    from tune.__main__ import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as info:
            run(main, list(argv), prog="tune")
    finally:
        os.chdir(old)
    return int(info.value.code or 0), capsys.readouterr().err


def assert_refused(code: int, err: str, *names: str) -> None:
    """One line on stderr, exit 2, no traceback, and the line names each of `names`."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]


# --- Optuna's private API in one adapter; no import-time changes to warnings or logging ----------------------------

def test_importing_the_store_changes_no_warning_filter_and_no_optuna_verbosity():
    code = textwrap.dedent("""
        import warnings, optuna
        filters, level = list(warnings.filters), optuna.logging.get_verbosity()
        import tune.store.liveness, tune.store.load, tune.store.storage, tune.store.locks, tune.store.spec
        assert list(warnings.filters) == filters, "a warning filter changed on import"
        assert optuna.logging.get_verbosity() == level, "optuna verbosity changed on import"
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_loading_a_study_leaves_optuna_verbosity_alone(tmp_path):
    import optuna

    from tune.store.load import load_study

    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="x", storage=url).set_user_attr("settings", {})
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        load_study("x", storage=url, results=tmp_path)
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


def private_uses(path: Path) -> list[str]:
    """Attribute reads of Optuna's private names (`x._storage`, `optuna.storages._rdb`) in a module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_study_id", "_backend"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna") \
                and any(part.startswith("_") for part in node.module.split(".")):
            found.append(f"{path.name}:{node.lineno} {node.module}")
    return found


def test_optunas_private_api_is_used_only_in_the_adapter():
    store = ROOT / "tune" / "store"
    assert private_uses(store / "_optuna.py"), "the finder finds nothing: it would pass whatever the code did"
    uses = [u for p in sorted(store.glob("*.py")) if p.name != "_optuna.py" for u in private_uses(p)]
    assert not uses, uses


# --- #24.1 a journal with a torn last line ------------------------------------------------------------------------

def journal_study(path: Path, trials: int = 3):
    """A journal study holding `trials` finished trials, opened as the tuner opens it."""
    import optuna

    from tune.store.spec import resolve_storage
    from tune.store.storage import make_storage, open_study

    spec = resolve_storage(f"journal:{path}", path.parent / "unused.db")
    study = open_study("s", make_storage(spec), "minimize", optuna.samplers.RandomSampler(seed=0),
                       optuna.pruners.NopPruner())
    for i in range(trials):
        study.tell(study.ask(), float(i))
    return spec, study


def complete_records(data: bytes) -> int:
    """How many whole JSON lines the journal's bytes start with."""
    import json

    n = 0
    for line in data.split(b"\n")[:-1]:
        json.loads(line)
        n += 1
    return n


@pytest.mark.parametrize("content", [b"garbage\n", b"line one\nline two\n", b"no newline at all",
                                     b'{"not": "a journal record"}\n{"op_code": 0}\n', b"\xff\xfe\x00binary"])
def test_a_file_that_is_no_journal_is_refused_and_left_as_it_was(tmp_path, content):
    # A log or a database named by mistake: its "torn" last line was moved aside and records appended to it.
    from gptcore.errors import UserError
    from tune.store.spec import resolve_storage
    from tune.store.storage import make_storage

    path = tmp_path / "notes.log"
    path.write_bytes(content)
    with pytest.raises(UserError, match="notes.log: not an Optuna journal .*left as it was"):
        make_storage(resolve_storage(f"journal:{path}", tmp_path / "unused.db"))
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["notes.log"]


def test_a_journal_whose_first_record_was_torn_is_repaired_as_empty(tmp_path, capsys):
    path = tmp_path / "study.journal"
    journal_study(path, trials=0)
    first = path.read_bytes().split(b"\n")[0]
    path.write_bytes(first[:20])  # killed while writing its very first record
    journal_study(path, trials=1)  # opens: the partial record goes aside, the study starts afresh
    assert Path(f"{path}.torn").read_bytes() == first[:20] and "torn" in capsys.readouterr().err
    assert path.read_bytes().startswith(b'{"op_code"')


def test_a_resume_onto_a_journal_torn_at_its_end_keeps_every_complete_record(tmp_path, capsys):
    import optuna

    from tune.store.storage import make_storage, open_study

    path = tmp_path / "study.journal"
    spec, _ = journal_study(path)
    whole = path.read_bytes()
    cut = len(whole) - 40  # `truncate -s -40`: the last record loses its end and its newline
    path.write_bytes(whole[:cut])
    kept = whole[:cut].rsplit(b"\n", 1)[0] + b"\n"
    capsys.readouterr()
    storage = make_storage(spec)  # the resume
    err = capsys.readouterr().err
    assert "torn" in err and f"{path}.torn" in err and len(err.strip().splitlines()) == 1, err
    assert path.read_bytes() == kept
    assert Path(f"{path}.torn").read_bytes() == whole[len(kept):cut]
    study = open_study("s", storage, "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    before = len(study.trials)
    study.tell(study.ask(), 9.0)  # written after the repair: must land on a whole line
    again = optuna.load_study(study_name="s", storage=make_storage(spec))
    assert len(again.trials) == before + 1
    data = path.read_bytes()
    assert data.startswith(kept) and complete_records(data) == len(data.splitlines())  # every line whole


def test_a_last_line_ending_in_a_newline_but_not_json_is_torn_too(tmp_path):
    from tune.store.journal import torn_tail

    path = tmp_path / "j.journal"
    path.write_bytes(b'{"op_code": 0}\n{"op_co\n')
    assert torn_tail(path) == len(b'{"op_code": 0}\n')
    path.write_bytes(b'{"op_code": 0}\n')
    assert torn_tail(path) is None
    path.write_bytes(b'{"op_co')  # the very first write torn: the whole file is the tail
    assert torn_tail(path) == 0


def test_no_append_lands_after_a_torn_line(tmp_path):
    from gptcore.errors import UserError

    path = tmp_path / "study.journal"
    _, study = journal_study(path)
    with open(path, "ab") as f:  # another writer's partial record, after this tuner opened the journal
        f.write(b'{"op_code": 5, "trial_id"')
    torn = path.read_bytes()
    with pytest.raises(UserError, match="torn"):
        study.tell(study.ask(), 1.0)
    assert path.read_bytes() == torn


def test_an_append_that_fails_part_way_cuts_its_partial_line_off(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "study.journal"
    _, study = journal_study(path)
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd: int, data) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="space"):
        study.ask()
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_a_torn_tail_that_cannot_be_moved_aside_is_refused_in_one_line_and_left_alone(tmp_path, monkeypatch):
    import errno

    from gptcore.errors import UserError
    from tune.store import journal
    from tune.store.storage import make_storage

    path = tmp_path / "study.journal"
    spec, _ = journal_study(path)
    path.write_bytes(path.read_bytes()[:-40])
    torn = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal, "atomic_write", full_disk)
    with pytest.raises(UserError) as info:
        make_storage(spec)
    assert str(spec.path) in str(info.value) and "No space left" in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == torn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.journal"]


# --- #24.4 every secret a storage URL can carry is masked ---------------------------------------------------------

SECRETS = {"userpw": "Upw-1", "query": "Qpw-2", "ssl": "Spw-3", "token": "Tok-4"}
LOADED_URL = (f"postgresql+psycopg://tune:{SECRETS['userpw']}@127.0.0.1:1/db?password={SECRETS['query']}"
              f"&sslpassword={SECRETS['ssl']}&sslmode=disable&access_token={SECRETS['token']}")


def test_a_storage_urls_query_secrets_are_masked_wherever_it_is_shown(tmp_path):
    from tune.store.spec import mask, resolve_storage

    spec = resolve_storage(LOADED_URL, tmp_path / "unused.db")
    for shown in (spec.display, str(spec), repr(spec), mask(LOADED_URL), mask(spec.url)):
        assert not [s for s in SECRETS.values() if s in shown], shown
    assert "sslmode=disable" in spec.display and "127.0.0.1:1/db" in spec.display  # the rest stays readable
    assert set(spec.secrets) == set(SECRETS.values())


def test_scrub_removes_query_secrets_from_a_drivers_message(tmp_path):
    from tune.store.spec import resolve_storage, scrub

    spec = resolve_storage(LOADED_URL, tmp_path / "unused.db")
    text = (f"connection to {LOADED_URL} failed: dsn 'password={SECRETS['query']} "
            f"sslpassword={SECRETS['ssl']}' token {SECRETS['token']}")
    assert not [s for s in SECRETS.values() if s in scrub(text, spec)]
    # Text that does not parse as a URL, with secrets of some other URL: hidden by their shape.
    raw = "other://u:Hidden-5@h/d?x=1&auth_token=Hidden-6 and password = Hidden-7"
    assert "Hidden" not in scrub(raw, spec)


def test_report_on_an_unreachable_server_names_no_secret(tmp_path, capsys):
    before = tree(tmp_path)
    code, err = tune_cli("report", "--study-name", "x", "--storage", LOADED_URL, cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, "--storage", "127.0.0.1:1")
    assert not [s for s in SECRETS.values() if s in err], err
    assert tree(tmp_path) == before


# --- #24.5 study names are paths ------------------------------------------------------------------------------------

BAD_NAMES = ["../../x", "/tmp/abs", "a/b", "x:references", "x:confirm", "", ".hidden", "-flag", "a b",
             "x" * 129, "nul\x00"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_study_name_is_refused_by_the_rule(name):
    from gptcore.errors import UserError
    from tune.store.names import check_study_name

    with pytest.raises(UserError, match="--study-name") as info:
        check_study_name(name)
    assert "letters, digits" in str(info.value) and "\n" not in str(info.value)


def test_good_study_names_pass_the_rule_including_the_longest_default():
    from tune.search.session import slug
    from tune.store.names import check_study_name

    longest_default = f"{slug('x' * 200)}-{slug('y' * 200)}"
    for name in ("wizard", "cpu-wizard_of_oz", "v1.2", "A", longest_default):
        assert check_study_name(name) == name


@pytest.mark.parametrize("name", ["../../escaped", "x:references"])
def test_tune_refuses_a_path_or_companion_study_name_before_creating_anything(tmp_path, capsys, name):
    (tmp_path / "work").mkdir()
    before = tree(tmp_path)
    code, err = tune_cli("--study-name", name, "--trials", "1", cwd=tmp_path / "work", capsys=capsys)
    assert_refused(code, err, "--study-name", name)
    assert tree(tmp_path) == before


def test_report_refuses_a_path_as_study_name(tmp_path, capsys):
    code, err = tune_cli("report", "--study-name", "../x", cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, "--study-name", "../x")


def test_the_api_refuses_a_path_as_study_name(tmp_path):
    from gptcore.errors import UserError
    from tune.store.load import load_study

    with pytest.raises(UserError, match="--study-name"):
        load_study("../../x", results=tmp_path)


# --- #24.9 a damaged SQLite page ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged_bytes(tmp_path_factory) -> bytes:
    """A SQLite study "x" of 12 trials, one 4 KiB page in its middle overwritten with noise (made once)."""
    import random

    import optuna

    db = tmp_path_factory.mktemp("damaged") / "study.db"
    study = optuna.create_study(study_name="x", storage=f"sqlite:///{db}")
    for i in range(12):
        trial = study.ask()
        trial.set_user_attr("note", "y" * 2000)
        study.tell(trial, float(i))
    del study
    data = bytearray(db.read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle:middle + 4096] = random.Random(0).randbytes(4096)
    return bytes(data)


@pytest.fixture
def damaged_study(tmp_path, damaged_bytes) -> Path:
    """tmp_path/results/x/study.db: the damaged study, a copy of its own."""
    db = tmp_path / "results" / "x" / "study.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(damaged_bytes)
    return db


def test_loading_a_damaged_sqlite_study_is_one_line_naming_the_file_and_recover(tmp_path, damaged_study):
    from gptcore.errors import UserError
    from tune.store.load import load_study

    db = damaged_study
    with pytest.raises(UserError) as info:
        load_study("x", results=tmp_path / "results")
    message = str(info.value)
    assert str(db) in message and ".recover" in message and "journal" in message and "\n" not in message


@pytest.mark.parametrize("command", [["report", "--study-name", "x"], ["card", "x"], ["compare", "x", "x"]])
def test_report_card_and_compare_refuse_a_damaged_sqlite_study_in_one_line(tmp_path, capsys, command,
                                                                          damaged_study):
    db = damaged_study
    before = tree(tmp_path)
    code, err = tune_cli(*command, cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, str(db), ".recover")
    assert tree(tmp_path) == before


def test_the_tuner_refuses_a_damaged_sqlite_study_before_holding_it(tmp_path, damaged_study):
    from gptcore.errors import UserError
    from tune.store.spec import resolve_storage
    from tune.store.storage import check_sqlite_file

    db = damaged_study
    before = tree(tmp_path)
    with pytest.raises(UserError, match=r"\.recover"):
        check_sqlite_file(resolve_storage(None, db), db.parent)
    assert tree(tmp_path) == before


# --- #24.11 storage side: in-memory SQLite; a study another tool made ---------------------------------------------

@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"])
def test_an_in_memory_sqlite_storage_is_refused_in_one_line(tmp_path, url):
    from gptcore.errors import UserError
    from tune.store.spec import resolve_storage

    with pytest.raises(UserError, match="in-memory") as info:
        resolve_storage(url, tmp_path / "unused.db")
    assert "--storage" in str(info.value) and "sqlite:///FILE" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_tune_refuses_an_in_memory_storage_before_creating_anything(tmp_path, capsys, url):
    from tests.conftest import CORPUS

    before = tree(tmp_path)
    code, err = tune_cli("--storage", url, "--trials", "1", "--data", str(CORPUS), "--results",
                         str(tmp_path / "results"), cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, "--storage", "in-memory")
    assert tree(tmp_path) == before



def test_tune_refuses_a_sqlite_url_naming_a_folder_before_creating_anything(tmp_path, capsys):
    from tests.conftest import CORPUS

    (tmp_path / "dbdir").mkdir()
    before = tree(tmp_path)
    code, err = tune_cli("--storage", f"sqlite:///{tmp_path / 'dbdir'}", "--trials", "1", "--data", str(CORPUS),
                         "--results", str(tmp_path / "results"), cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, "--storage", "not a regular file")
    assert tree(tmp_path) == before  # before: a 0-byte dbdir.tuner beside it and "unable to open database file"


def foreign_study(db: Path, *, directions: list[str], attrs: dict) -> None:
    """A study "x" in `db` made by another tool: its own objectives, its own attributes, one finished trial."""
    import optuna

    db.parent.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "new study created" line is no output of the test
    try:
        study = optuna.create_study(study_name="x", storage=f"sqlite:///{db}", directions=directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2)
    study.tell(trial, [1.0] * len(directions))


@pytest.mark.parametrize(("directions", "attrs", "lacks"), [
    (["minimize", "maximize"], {"settings": {}}, "2 objectives"),
    (["minimize"], {"owner": "someone else"}, "none of the tuner's attributes"),
])
@pytest.mark.parametrize("command", [["report", "--study-name", "x"], ["card", "x"], ["compare", "x", "x"]])
def test_a_study_another_tool_made_is_refused_at_load_time_naming_what_it_lacks(tmp_path, capsys, directions, attrs,
                                                                                 lacks, command):
    foreign_study(tmp_path / "results" / "x" / "study.db", directions=directions, attrs=attrs)
    before = tree(tmp_path)
    code, err = tune_cli(*command, cwd=tmp_path, capsys=capsys)
    assert_refused(code, err, "'x'", lacks)
    assert tree(tmp_path) == before


def test_warm_starting_from_another_tool_s_study_with_two_objectives_is_one_line(tmp_path, capsys):
    from tests.conftest import CORPUS

    foreign_study(tmp_path / "other.db", directions=["minimize", "maximize"], attrs={})
    before = tree(tmp_path)
    code, err = tune_cli("--warm-start", "x", "--storage", f"sqlite:///{tmp_path / 'other.db'}", "--study-name", "y",
                         "--trials", "1", "--data", str(CORPUS), "--results", str(tmp_path / "results"), cwd=tmp_path,
                         capsys=capsys)
    assert_refused(code, err, "--warm-start x", "2 objectives")
    assert tree(tmp_path) == before
