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
    optuna.create_study(study_name="x", storage=url)
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
