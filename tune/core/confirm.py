"""Confirmation runs: how many each confirmed configuration gets, and how the tables, the console and the files name
them (and every other run).

The search side claims them (tune.search.dispatch); the report side shows them (tune.report.frame).
"""

from __future__ import annotations

CONFIRM_RUNS = 2  # each confirmed configuration trains this many more times, with seeds --seed + 1, + 2, ...


def source_name(number: int | None, preset: str | None) -> str:
    """How a confirmation run names the configuration it repeats (user attr `confirm_of`): 'trial 12', 'ref baby'."""
    return f"ref {preset}" if preset else f"trial {number}"


def run_stem(number: int | None, preset: str | None) -> str:
    """The file name a run's log, curve and checkpoint folder share: 'trial_0012', 'ref_baby' (a confirmation run
    adds '_1', '_2' to its configuration's)."""
    return f"ref_{preset}" if preset else f"trial_{number:04d}"


def confirm_label(confirm_of: str, run: int | None) -> str:
    """A confirmation run in the tables and on the console: 'confirm trial 12 #1'."""
    return f"confirm {confirm_of} #{run if run is not None else '?'}"
