"""`python -m tune card`: a one-page hardware report card of a study, one self-contained HTML file.

    python -m tune card                                # the only study under results/
    python -m tune card results/amd-epyc-wizard-of-oz --matmul results/bench/matmul.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from gptcore.cliutil import EXIT_USAGE, Parser, prog, run
from gptcore.errors import UserError
from tune import card_matmul
from tune.card_html import esc, fmt
from tune.card_sections import SECTIONS, named
from tune.load import DEFAULT_RESULTS, load_named, load_study
from tune.report import choose_winner, label, oom_frontier, originals, trials_frame
from tune.space import PARAMS

OOM_STATUSES = ("oom", "predicted_oom")


def _prog() -> str:
    """`python -m tune card`, or `gptcore-tune card` under the console command."""
    return f"{prog('python -m tune')} card"


def build_parser() -> argparse.ArgumentParser:
    """Flags of `python -m tune card`."""
    p = Parser(prog=_prog(), description="A one-page hardware report card of a study: matmul rate "
               "against the device's peak, the best configuration, the out-of-memory frontier, loss vs throughput "
               "vs memory, throughput against model size. One HTML file; viewing it needs no network.")
    p.add_argument("study", nargs="?", default=None, metavar="STUDY",
                   help="a study's results folder (holding study.db) or a study name (default: the only study "
                        "under --results)")
    p.add_argument("--storage", default=None, help="the storage holding STUDY (default: SQLite in its results "
                   "folder)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"results folder: studies by name, and bench/matmul.json (default {DEFAULT_RESULTS}/)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--matmul", type=Path, default=None, metavar="FILE.json",
                   help="a `python -m benchmarks matmul` JSON (default: RESULTS/bench/matmul.json when it was "
                        "measured on the study's device, else a quick pass run now, about 10 s)")
    which.add_argument("--no-matmul", action="store_true", help="leave the matmul section out (the card says so)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.html",
                   help="where to write the card (default: card.html in the study's results folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the path of the card written")
    return p


def _value(v: Any) -> Any:
    """A figure for JSON: plain int/float/str, None where missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def trial_record(row: pd.Series) -> dict[str, Any]:
    """One trial's raw figures on the card."""
    keys = ("status", *PARAMS, "val_loss", "tokens_per_s", "peak_memory_bytes", "n_params", "steps", "trial_seconds")
    # Figures to take with care (summary.md's "flags"): read from the notes, absent columns meaning none.
    flags = [name for name, col in (("contended", "contended"), ("short", "budget_warning"))
             if isinstance(row.get(col), str) and row.get(col)]
    return {"label": label(row), **{k: _value(row.get(k)) for k in keys}, "flags": flags}


def _ran(study: optuna.Study) -> str:
    times = [t for tr in study.get_trials(deepcopy=False) for t in (tr.datetime_start, tr.datetime_complete) if t]
    if not times:
        return "no trial started yet"
    return f"{min(times):%Y-%m-%d %H:%M} to {max(times):%Y-%m-%d %H:%M} (local time)"


def gather(study: optuna.Study, folder: Path, matmul: card_matmul.Matmul | None) -> dict[str, Any]:
    """Every raw figure the card shows, from the study's storage (and the matmul figures)."""
    env, settings = study.user_attrs.get("environment", {}), study.user_attrs.get("settings", {})
    df = trials_frame(study)
    runs = originals(df)
    winner = choose_winner(df, settings)
    best = None
    if winner is not None:
        best = trial_record(winner.row)
        if winner.line is not None:
            best["confirmed_mean"] = _value(winner.line["mean"])
            best["confirmed_runs"] = int(winner.line["n"])
    frontier = oom_frontier(runs)
    peak = runs["peak_memory_bytes"].max()
    return {
        "study": study.study_name, "folder": str(folder), "ran": _ran(study),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": {k: _value(env.get(k)) for k in ("device", "device_name", "device_type", "cpu",
                                                          "cpu_threads", "torch", "python", "gpu_memory_bytes")},
        "optuna": optuna.__version__,
        "settings": {k: _value(settings.get(k)) for k in ("budget", "dtype", "objective", "memory_limit_bytes",
                                                           "trials", "sampler", "pruner")},
        "counts": {k: int(v) for k, v in runs["status"].value_counts().items()},
        "trials": [trial_record(r) for _, r in runs.iterrows()],
        "winner": best,
        "out_of_memory": int(runs["status"].isin(OOM_STATUSES).sum()),
        "largest_peak_bytes": _value(peak),
        "frontier": [{k: _value(v) for k, v in r.items()} for r in frontier.to_dict("records")],
        "matmul": None if matmul is None else {
            "source": matmul.source, "note": matmul.note, "missing": matmul.missing, "rows": matmul.rows,
            "peaks": matmul.peaks, "crossover": matmul.crossover},
    }


def check_out(path: Path) -> None:
    """Refuse, before any work, a card path that cannot be written (its folder is a file, or not writable)."""
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder (expected the path of an HTML file)")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: {parent} is not writable")


def render(data: dict[str, Any]) -> str:
    """The card's HTML from its figures."""
    from tune.card_html import page

    env = data["environment"]
    head = (f"<h1>Hardware report card: {esc(env.get('device_name') or env.get('device') or 'unknown device')}</h1>"
            f'<p class="sub">study {esc(data["study"])} - what this device does with the study\'s GPT</p>')
    return page(f"Report card: {data['study']}", [head, *(s(data) for s in SECTIONS)], data)


def main(argv: list[str] | None = None) -> int:
    """Write the card of a study and print its path; bad input: one line on stderr, exit code 2, nothing written."""
    args = build_parser().parse_args(argv)
    try:
        return write_card(args)
    except UserError as exc:  # here, not only in cliutil.run: callers of main() get the same one line
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def write_card(args: argparse.Namespace) -> int:
    """The card of the study `args` name, written to --out."""
    from gptcore.files import atomic_write_text

    if args.study is None:
        loaded = load_study(None, storage=args.storage, results=args.results)
    else:
        loaded = load_named(args.study, storage=args.storage, results=args.results)
    out = args.out or loaded.folder / "card.html"
    check_out(out)
    env = loaded.study.user_attrs.get("environment", {})
    if args.no_matmul:
        matmul = card_matmul.Matmul("left out (--no-matmul)", missing="left out: --no-matmul was given")
    else:
        matmul = card_matmul.find(env, args.matmul, args.results, args.quiet)
    if matmul.missing and not args.quiet:
        print(f"matmul section: {matmul.missing}")
    data = gather(loaded.study, loaded.folder, matmul)
    atomic_write_text(out, render(data))
    if not args.quiet:
        w = data["winner"]
        print(f"study {data['study']}: {len(data['trials'])} configurations, best "
              + (f"{named(w['label'])} (val loss {fmt('loss', w['val_loss'])})" if w else "none yet"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main, prog=_prog())
