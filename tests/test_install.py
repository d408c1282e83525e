"""An installed copy runs the README's main command: a wheel built from this checkout, installed outside it into a
read-only folder (as a shared or system install is), runs a tiny study on its packaged corpus from a folder of its own.

Slow on purpose (marked `slow`): it builds a wheel and starts three interpreters, one of them a tuner with its trial,
because what it checks (what the wheel carries, where an installed copy reads and writes) exists only in a real
build and a real install. The build uses the setuptools already installed (--no-build-isolation; the `dev` extra
asks for one that builds wheels itself) and installs with --no-deps --target beside this environment's torch and
Optuna: nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gptcore.corpus import CORPUS_NAME

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the project's files, its packages and the corpus (build/ and *.egg-info land in the copy;
# the rest of data/ may hold a user's prepared corpora, which the build never reads).
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "gptcore", "tune", "benchmarks",
           f"data/{CORPUS_NAME}"]
# The tuner's smallest study: one trial of a 1-layer model for 4 steps, no references, no confirmation.
TINY = ["--trials", "1", "--budget", "4steps", "--references", "none", "--confirm", "0", "--device", "cpu",
        "--batch-size", "2", "--block-size", "8", "--n-embed", "64", "--n-head", "1", "--n-layer", "1",
        "--learning-rate", "1e-3", "--no-progress", "-q"]


def _pip(*args: str) -> None:
    """pip in this environment, offline; its output shown only when it fails."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args,
                           "--no-deps", "--no-index"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _read_only(folder: Path, on: bool) -> None:
    """Take away (or give back) write permission on every file and folder under `folder`."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) if on else mode | stat.S_IWUSR)


@pytest.fixture
def installed(tmp_path):
    """The site folder: the checkout built into a wheel and installed with --target into a read-only folder."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(src))
    (wheel,) = (tmp_path / "dist").glob("gptcore_tune-*.whl")
    site = tmp_path / "site"
    _pip("install", "--target", str(site), str(wheel))
    _read_only(site, True)
    yield site
    _read_only(site, False)  # so that pytest can delete it


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_a_study_on_its_packaged_corpus(installed, tmp_path):
    site = installed
    work = tmp_path / "work"  # the user's folder: neither the checkout nor the install
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "GPTCORE_CACHE": str(tmp_path / "cache")}
    where = subprocess.run(
        [sys.executable, "-c", "import gptcore, tune; from gptcore.corpus import DEFAULT_CORPUS as c; "
                               "print(gptcore.__file__, tune.__file__, c, sep='\\n')"],
        cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    # The installed copy is imported (not the checkout), and its default corpus is the one inside the wheel.
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert Path(where[2]).read_bytes() == (ROOT / "data" / CORPUS_NAME).read_bytes()

    proc = subprocess.run([sys.executable, "-m", "tune", *TINY], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = (work / "results").glob("*/summary.md")  # the default --results, under the user's folder
    assert summary.parent.name.endswith("wizard-of-oz")  # the default study name: <device>-<corpus>
    assert (summary.parent / "best.json").is_file()
    # The corpus was prepared into the cache, never beside the installed file (the install is read-only anyway).
    assert list((tmp_path / "cache").glob("wizard_of_oz-*/meta.json"))
    assert not list(site.rglob("meta.json"))
