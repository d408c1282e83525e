"""Check the user's --model class before a study starts, in a child process (the tuner's parent never imports
torch): `python -m gptcore.usermodel SPEC` builds it at a tiny shape and trains one step (gptcore.usermodel.probe).

A class that cannot train is one line naming --model (the child's last line of stderr), before anything of the
study is created; a class that can tells the fields it declares, which the study may search.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from gptcore.errors import UserError

# Importing torch and the user's module, building a tiny model and one step: a few seconds; a class that takes
# longer than this at the probe's shape hangs.
PROBE_TIMEOUT_S = 300.0
CHILD_PROG = "python -m gptcore.usermodel"


def probe_model(spec: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Probe `spec` in a child: {"spec", "class", "fields": {name: default}, "parameters", "flops_per_token",
    "generate"}; a UserError in one line when the class cannot train."""
    try:
        # run() kills the child on any exception here (Ctrl-C included): no orphan is left.
        done = subprocess.run([sys.executable, "-m", "gptcore.usermodel", spec], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"--model {spec}: building it and training one step of a tiny batch did not finish in "
                        f"{timeout:.0f} s") from None
    if done.returncode != 0:
        raise UserError(_last_line(done.stderr, spec, done.returncode))
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UserError(f"--model {spec}: its probe printed no result ({done.stdout[-200:]!r})") from None
    if not isinstance(result, dict) or not isinstance(result.get("fields"), dict):
        raise UserError(f"--model {spec}: its probe printed {result!r}, not a result")
    return result


def _last_line(stderr: str, spec: str, code: int) -> str:
    """The child's one-line error without its program prefix; else how it ended."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    prefix = f"{CHILD_PROG}: error: "
    errors = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    if errors:
        return errors[-1]
    ended = f"signal {-code}" if code < 0 else f"exit code {code}"
    last = f": {lines[-1].strip()[:300]}" if lines else ""
    return f"--model {spec}: probing it ended with {ended}{last}"
