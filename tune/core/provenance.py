"""Where a study's figures come from: the command lines that ran it, when, and with which versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import sys
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from tune.core.studyfile import StudyFile

INVOCATION_PREFIX = "invocation:"  # one study user attribute per tuner start (no read-modify-write between tuners)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a person would type it again: `python -m tune ...` or the console command."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(argv[0]) if argv else "python"
    # `python -m tune` leaves the package's __main__.py in argv[0]: name the module, not the file.
    if program == "__main__.py":
        program = f"python -m {os.path.basename(os.path.dirname(argv[0]))}"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def study_file_record(study_file: StudyFile | None) -> dict[str, Any]:
    """What an invocation read beside its command line: {"study_file": {"path", "text"}} for --config, else {}.

    The text itself, not a hash or the path alone: the file may change or vanish after the study, and a command line
    that says `--config study.toml` is only reproducible with what that file held then."""
    return {} if study_file is None else {"study_file": {"path": study_file.path, "text": study_file.text}}


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
