"""Flags every benchmarks subcommand shares: where results go, progress and -q/--quiet."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.progress import Mode, choose

QUIET_HELP = ("print only the result table and the paths written: no progress, no notes (peaks, crossover, "
              "no-GPU line); errors still print")
NO_PROGRESS_HELP = ("no progress at all (by default a bar when stderr is a terminal, else one plain line per "
                    "case on stderr)")
OUT_HELP = "folder for the results (default results/bench; created if missing)"


def add_output_flags(p: argparse.ArgumentParser, out: bool = True) -> None:
    """--out (unless out=False), --no-progress and -q/--quiet."""
    if out:
        p.add_argument("--out", type=Path, default=Path("results/bench"), help=OUT_HELP)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def progress_mode(args: argparse.Namespace) -> Mode:
    """The progress a command shows, from --no-progress, -q and whether stderr is a terminal."""
    return choose(getattr(args, "no_progress", False), getattr(args, "quiet", False))
