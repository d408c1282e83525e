"""Shared fixtures: the shipped corpus prepared once per session, a private cache folder."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "wizard_of_oz.txt"

_needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda(test):
    """A CUDA test: `pytest -m cuda` selects it, and it skips where no GPU is found."""
    # Both marks: skipif alone carries no `cuda` mark, so `pytest -m cuda` selected nothing.
    return pytest.mark.cuda(_needs_gpu(test))


def ctrl_c_default() -> None:
    """preexec_fn for a child that a test sends Ctrl-C (SIGINT): the default disposition, whatever this process has.

    A shell starts background jobs (`pytest ... &`) with SIGINT ignored, and children inherit an ignored signal:
    Python would then never raise KeyboardInterrupt in them, and the test would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(cli: str, argv: list[str], capfd) -> tuple[int, str, str]:
    """`python -m CLI argv` in this process: its main() through gptcore.cliutil.run, as the console command runs
    it, errors named `python -m CLI`; (exit code, stdout, stderr), read at the file descriptors (a trial process's
    output counts too). An exception other than the exit fails the test with its traceback.

    A refusal costs milliseconds here, against an interpreter and its imports in a process of its own; each CLI
    keeps one real-process case (tests/test_bad_input.py) for the console path end to end."""
    import importlib

    from gptcore.cliutil import run

    module = importlib.import_module(f"{cli}.__main__")
    capfd.readouterr()  # only this command's output
    with pytest.raises(SystemExit) as info:
        run(module.main, list(argv), prog=module.PROG)
    out, err = capfd.readouterr()
    return info.value.code, out, err


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # On-the-fly preparations must never land in the user's ~/.cache during tests.
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path_factory.getbasetemp() / "gptcore-cache"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The shipped corpus, prepared into a session temp folder."""
    from gptcore.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "woz"
    prepare(CORPUS, out, progress=False)
    return out


@pytest.fixture(scope="session")
def data(prepared):
    """TokenData over the prepared shipped corpus."""
    from gptcore.data import TokenData

    return TokenData(prepared)


def _postgres_admin_url() -> str | None:
    """TUNE_TEST_POSTGRES, or None (skip) - but with TUNE_REQUIRE_POSTGRES=1 a missing setting fails the test."""
    import os

    url = os.environ.get("TUNE_TEST_POSTGRES")
    if not url:
        if os.environ.get("TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("TUNE_REQUIRE_POSTGRES=1 but TUNE_TEST_POSTGRES is unset")
        pytest.skip("set TUNE_TEST_POSTGRES=postgresql+psycopg://USER:PW@HOST/DB to run the PostgreSQL tests")
    return url


@pytest.fixture
def postgres_db():
    """A factory of fresh, empty PostgreSQL databases (URL each), all dropped after the test.

    The role in TUNE_TEST_POSTGRES needs CREATEDB. An unreachable server fails the test: it was asked for.
    """
    yield from _postgres_databases()


@pytest.fixture(scope="module")
def postgres_module_db():
    """postgres_db for a module-scoped fixture (one run several tests check): all dropped after the module."""
    yield from _postgres_databases()


def _postgres_databases():
    """Yield a factory of fresh PostgreSQL databases, then drop every one it made."""
    import uuid

    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin = make_url(_postgres_admin_url())
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    engine = sqlalchemy.create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"tune_test_{uuid.uuid4().hex[:12]}"
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return admin.set(database=name).render_as_string(hide_password=False)

    yield make
    with engine.connect() as conn:
        for name in made:  # FORCE: a test's killed process may have left a session open
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_db) -> str:
    """The URL of a fresh, empty PostgreSQL database for this test (dropped after it)."""
    return postgres_db()
