"""Where a study's figures come from: the command lines that ran it, when, and with which versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import sys
from typing import Any

import optuna

INVOCATION_PREFIX = "invocation:"  # one study user attribute per tuner start (no read-modify-write between tuners)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a person would type it again: `python -m tune ...` or the console command."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(argv[0]) if argv else "python"
    # `python -m tune` leaves the package's __main__.py in argv[0]: name the module, not the file.
    if program == "__main__.py":
        program = f"python -m {os.path.basename(os.path.dirname(argv[0]))}"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """This tool's, Optuna's, torch's (without importing it) and Python's versions."""
    return {"gptcore-tune": _version("gptcore-tune"), "optuna": optuna.__version__, "torch": _version("torch"),
            "python": platform.python_version()}


def invocations(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded start of a tuner on this study, oldest first."""
    runs = [v for k, v in study.user_attrs.items() if k.startswith(INVOCATION_PREFIX) and isinstance(v, dict)]
    return sorted(runs, key=lambda v: v.get("started", ""))
