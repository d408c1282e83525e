"""python -m tune compare: several studies side by side (last year's GPU against the new one, float32 against
bfloat16, CPU against GPU): what each study is, its best configuration, the speed of the configurations they all
ran with the speed-up of each, and their out-of-memory frontiers. Writes compare.md and compare.png.

    python -m tune compare results/old-gpu results/new-gpu        # results folders (holding study.db)
    python -m tune compare cmp-f32 cmp-bf16 --results /tmp/cmp    # or study names

The first study is the baseline: every speed-up is a later study's tokens/s over the first's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptcore.cliutil import Parser, prog
from gptcore.errors import UserError
from gptcore.files import atomic_write, atomic_write_text, check_output_dir
from tune.report.compare.data import default_folder, load_sides
from tune.report.compare.render import markdown, plot
from tune.store.load import DEFAULT_RESULTS


def _prog() -> str:
    """`python -m tune compare`, or `gptcore-tune compare` under the console command."""
    return f"{prog('python -m tune')} compare"


def build_parser() -> Parser:
    """Flags of `python -m tune compare`."""
    p = Parser(prog=_prog(), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="two or more studies: a results folder holding study.db, or a study name (in --storage, "
                        "else in RESULTS/NAME/study.db); the first is the baseline of every speed-up")
    p.add_argument("--storage", default=None,
                   help="the storage holding the studies given by name (default: each one's RESULTS/NAME/study.db)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="where studies given by name live: RESULTS/NAME/study.db (default results/)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for compare.md and compare.png (default: compare-A-vs-B beside the first study's "
                        "results folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the paths written, not the tables")
    return p


def main(argv: list[str] | None = None) -> int:
    """Compare the studies named on the command line; write compare.md and compare.png."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.studies) < 2:
        parser.error(f"expected two or more studies to compare, got one ({args.studies[0]})")
    sides = load_sides(args.studies, storage=args.storage, results=args.results)
    out = args.out if args.out is not None else sides[0].folder.parent / default_folder(sides)
    try:
        check_output_dir(out, "comparison")
    except UserError as exc:
        raise UserError(f"--out {exc}") from None
    text = markdown(sides)
    try:
        md = atomic_write_text(out / "compare.md", text)
        png = atomic_write(out / "compare.png", lambda tmp: plot(sides, tmp))
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    if not args.quiet:
        print(text)
    print(f"wrote {md}")
    print(f"wrote {png}")
    return 0
