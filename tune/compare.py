"""python -m tune compare: several studies side by side (last year's GPU against the new one, float32 against
bfloat16, CPU against GPU): what each study is, its best configuration, the speed of the configurations they all
ran with the speed-up of each, and their out-of-memory frontiers. Writes compare.md and compare.png.

    python -m tune compare results/old-gpu results/new-gpu        # results folders (holding study.db)
    python -m tune compare cmp-f32 cmp-bf16 --results /tmp/cmp    # or study names

The first study is the baseline: every speed-up is a later study's tokens/s over the first's.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from gptcore.cliutil import Parser, prog
from gptcore.errors import UserError
from gptcore.files import atomic_write, atomic_write_text, check_output_dir
from tune.load import DEFAULT_RESULTS, load_named
from tune.report import flagged, trials_frame


def _prog() -> str:
    """`python -m tune compare`, or `gptcore-tune compare` under the console command."""
    return f"{prog('python -m tune')} compare"
# The model and batch shape: what a run's speed depends on. The learning rate changes what a step learns, not
# what it costs, so runs that differ only in it are the same configuration here.
SHAPE = ("batch_size", "block_size", "n_embed", "n_head", "n_layer")
# Runs that trained and measured their speed: to the target (ok) or stopped at a lower rung (pruned).
SPEED_STATUSES = ("ok", "pruned")


@dataclass(frozen=True)
class Side:
    """One study of the comparison: its column name, every run it holds, its environment and settings."""

    name: str
    given: str  # as named on the command line: a results folder or a study name
    study: optuna.Study
    folder: Path
    df: pd.DataFrame  # tune.report.trials_frame: references, searched trials, confirmation runs
    env: dict[str, Any]
    settings: dict[str, Any]


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
    from tune.comparereport import markdown, plot

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


def load_sides(args: list[str], *, storage: str | None, results: Path) -> list[Side]:
    """Open every study (UserError naming the first that cannot be read) and name its column."""
    loaded = [load_named(a, storage=storage, results=results) for a in args]
    raw = [(lo, lo.study.user_attrs.get("environment", {}), lo.study.user_attrs.get("settings", {}))
           for lo in loaded]
    names = column_names([(env, settings, lo.study.study_name) for lo, env, settings in raw])
    return [Side(n, arg, lo.study, lo.folder, trials_frame(lo.study), env, settings)
            for n, arg, (lo, env, settings) in zip(names, args, raw)]


def column_names(studies: list[tuple[dict[str, Any], dict[str, Any], str]]) -> list[str]:
    """Per (environment, settings, study name): 'device dtype', with the study name where two would collide,
    and a position where even that does (the same study given twice)."""
    base = [f"{env.get('device_name') or env.get('device') or 'unknown device'} {settings.get('dtype') or '?'}"
            for env, settings, _ in studies]
    names = [f"{b} ({s})" if base.count(b) > 1 else b for b, (_, _, s) in zip(base, studies)]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def default_folder(sides: list[Side]) -> str:
    """compare-A-vs-B: the study names, made safe for a folder name."""
    return "compare-" + "-vs-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", s.study.study_name) for s in sides)


# --- the figures ---------------------------------------------------------------------------------------------


def speeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape (SHAPE, the index): the median tokens/s over every run that measured it, how many runs, and how
    many of them other processes competed with (tune's contention check: their tokens/s understate the shape)."""
    runs = df[df["status"].isin(SPEED_STATUSES) & df["tokens_per_s"].notna()].dropna(subset=list(SHAPE))
    runs = runs.astype({k: int for k in SHAPE}).assign(contended=flagged(runs["contended"]))
    grouped = runs.groupby(list(SHAPE))
    return pd.DataFrame({"tokens_per_s": grouped["tokens_per_s"].median().astype(float), "runs": grouped.size(),
                         "contended": grouped["contended"].sum().astype(int)})


def shared_speeds(sides: list[Side]) -> pd.DataFrame:
    """The shapes every study ran: per study i, its median tokens/s (`tokens_per_s_i`), runs (`runs_i`) and
    contended runs (`contended_i`); per later study, its speed-up over the first (`speedup_i`: study i's tokens/s
    over the baseline's)."""
    tables = [speeds(s.df) for s in sides]
    common = tables[0].index
    for t in tables[1:]:
        common = common.intersection(t.index)
    out = pd.DataFrame(index=common.sort_values())
    for i, t in enumerate(tables):
        out[f"tokens_per_s_{i}"] = t["tokens_per_s"].reindex(out.index)
        out[f"runs_{i}"] = t["runs"].reindex(out.index)
        out[f"contended_{i}"] = t["contended"].reindex(out.index)
    for i in range(1, len(tables)):
        out[f"speedup_{i}"] = out[f"tokens_per_s_{i}"] / out["tokens_per_s_0"]
    return out


def geometric_mean(values: pd.Series) -> float:
    """The geometric mean of positive ratios (NaN when there are none): the fair average of speed-ups."""
    v = values.dropna()
    return math.exp(sum(math.log(x) for x in v) / len(v)) if len(v) else math.nan
