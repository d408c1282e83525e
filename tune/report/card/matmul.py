"""The matmul figures of `tune card`: a `python -m benchmarks matmul` JSON, or a quick pass of it run now.

tune never imports benchmarks (nor torch in this process): the quick pass is a subprocess, and its JSON is read
like any other. Keys read: environment.cpu and environment.device_name (which device it measured), peaks
(device, dtype, peak_gflops, peak_source), crossover ({series: size or null}) and the rows of results (device,
dtype, lib, size, m, n, k, gflops; transfer, peak_gflops and share_of_peak when present).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gptcore.errors import UserError
from gptcore.files import read_json_object

# About 10 s on one core of this 2-core CPU (torch only: the library training uses), plus the benchmark's CPU
# peak reference (torch at 2048, measured on its own). A GPU's crossover with the CPU lies well below 2048, and
# the CPU side of 4096 would take about a minute on one thread.
QUICK_SIZES = {"cpu": "64,128,256,512,1024", "cuda": "64,128,256,512,1024,2048"}
QUICK_ARGS = ["--libs", "torch", "--min-time", "0.1", "--repeat", "3", "--no-progress"]
QUICK_TIMEOUT_S = 180  # a hard stop only: the pass itself takes seconds
ROW_KEYS = ("device", "dtype", "lib", "size", "m", "n", "k", "gflops")


@dataclass
class Matmul:
    """The figures of the matmul section and where they came from; `rows` empty and `missing` set: none."""

    source: str  # "results/bench/matmul.json, measured 2026-01-02 10:00 UTC" or "quick pass run now (...)"
    rows: list[dict[str, Any]] = field(default_factory=list)
    peaks: list[dict[str, Any]] = field(default_factory=list)
    crossover: dict[str, str | None] = field(default_factory=dict)
    missing: str | None = None  # why there are no figures (quick pass failed, --no-matmul)
    note: str | None = None  # a caveat: measured on another device than the study's


def read_json(path: Path, flag: str) -> dict[str, Any]:
    """A matmul JSON's content; UserError naming `flag` and the file when it is not one."""
    doc = read_json_object(path, "a `python -m benchmarks matmul` JSON", flag=flag)
    rows = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) for r in rows):
        raise UserError(f"{flag} {path}: expected a `python -m benchmarks matmul` JSON (results rows with "
                        f"{', '.join(ROW_KEYS)})")
    return doc


def measured_on(doc: dict[str, Any], env: dict[str, Any]) -> bool:
    """Whether a matmul JSON timed the device the study trained on (same CPU model, or same GPU model)."""
    menv = doc.get("environment") or {}
    kind = env.get("device_type") or str(env.get("device", "cpu")).split(":")[0]
    devices = {str(r.get("device", "")).split(":")[0] for r in doc["results"]}
    if kind not in devices:
        return False
    if kind == "cpu":
        return bool(menv.get("cpu")) and menv.get("cpu") == env.get("cpu")
    return bool(menv.get("device_name")) and menv.get("device_name") == env.get("device_name")


def _describe(doc: dict[str, Any]) -> str:
    menv = doc.get("environment") or {}
    return str(menv.get("device_name") or menv.get("cpu") or "an unrecorded device")


def from_doc(doc: dict[str, Any], source: str, note: str | None = None) -> Matmul:
    """The section's figures from a matmul JSON (optional keys may be absent)."""
    peaks = [p for p in doc.get("peaks") or [] if isinstance(p, dict)]
    cross = doc.get("crossover") if isinstance(doc.get("crossover"), dict) else {}
    cross = {k: v for k, v in cross.items() if k != "note"}  # {"note": why empty}: no series
    return Matmul(source, list(doc["results"]), peaks, cross, note=note)


def _when(path: Path) -> str:
    stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def quick_pass(env: dict[str, Any], quiet: bool) -> Matmul:
    """Run `python -m benchmarks matmul` briefly on the study's device type (and the CPU, for the crossover)."""
    kind = env.get("device_type") or str(env.get("device", "cpu")).split(":")[0]
    kind = "cuda" if kind == "cuda" else "cpu"  # the only device types the benchmark times
    devices = "cpu" if kind == "cpu" else "cpu,cuda"
    threads = env.get("cpu_threads")
    with tempfile.TemporaryDirectory(prefix="tune-card-") as tmp:
        args = ["--sizes", QUICK_SIZES[kind], "--devices", devices, *QUICK_ARGS]
        if isinstance(threads, int) and threads > 0:
            args += ["--threads", str(threads)]  # as many threads as each trial had
        shown = " ".join(["python -m benchmarks matmul", *args])
        cmd = [sys.executable, "-m", "benchmarks", "matmul", *args, "--out", tmp]
        if not quiet:
            print(f"running a quick matmul pass: {shown}", flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return Matmul(f"quick pass run now ({shown})", missing=f"the quick pass ran over {QUICK_TIMEOUT_S} s")
        # A few seconds per size: enough to place the device, not a measurement to quote (another process on
        # the same cores moves it); the full benchmark's JSON, given with --matmul, is.
        source = (f"quick pass run now ({shown}): a rough figure, for a careful one run `python -m benchmarks "
                  f"matmul` and give its JSON with --matmul")
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {done.returncode}"
            device = env.get("device_name", "the study's device")
            return Matmul(source, missing=f"the quick pass failed: {why} (give --matmul with a `python -m "
                                          f"benchmarks matmul` JSON measured on {device})")
        return from_doc(read_json(Path(tmp) / "matmul.json", "quick pass"), source)


def find(env: dict[str, Any], given: Path | None, results: Path, quiet: bool) -> Matmul:
    """The matmul figures for a study run on `env`: the --matmul file, else results/bench/matmul.json when it was
    measured on the study's device, else a quick pass run now."""
    if given is not None:
        doc = read_json(given, "--matmul")
        note = None if measured_on(doc, env) else (
            f"measured on {_describe(doc)}, not on the study's device ({env.get('device_name', 'unrecorded')})")
        return from_doc(doc, f"{given}, written {_when(given)}", note)
    default = results / "bench" / "matmul.json"
    why = f"there is no {default}"
    if default.is_file():
        try:
            doc = read_json(default, "results/bench")
        except UserError as exc:
            doc, why = None, str(exc)
        if doc is not None and measured_on(doc, env):
            return from_doc(doc, f"{default}, written {_when(default)}")
        if doc is not None:
            why = f"{default} was measured on {_describe(doc)}, not on this study's device"
    found = quick_pass(env, quiet)
    found.source += f"; {why}"
    return found
