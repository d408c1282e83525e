"""`python -m tune card`: a one-page hardware report card of a study, one self-contained HTML file.

    python -m tune card                                # the only study under results/
    python -m tune card results/amd-epyc-wizard-of-oz --matmul results/bench/matmul.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gptcore.cliutil import EXIT_USAGE, Parser, prog, run
from gptcore.errors import UserError
from tune.report.card import matmul as card_matmul
from tune.report.card.gather import gather
from tune.report.card.html import esc, fmt
from tune.report.card.sections import SECTIONS, named
from tune.store.load import DEFAULT_RESULTS, load_named, load_study


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
    from tune.report.card.html import page

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
        print(f"study {data['study']}: {len(data['trials'])} configurations, best {_best(data['winner'])}")
    print(f"wrote {out}")
    return 0


def _best(w: dict | None) -> str:
    """The winner and the figure the card and summary.md judge it by: its confirmed mean when it has one."""
    if w is None:
        return "none yet"
    if w.get("confirmed_mean") is not None:
        return f"{named(w['label'])} (mean val loss {fmt('loss', w['confirmed_mean'])} over {w['confirmed_runs']} runs)"
    return f"{named(w['label'])} (val loss {fmt('loss', w['val_loss'])})"


if __name__ == "__main__":
    run(main, prog=_prog())
