"""python -m tune: which GPT configuration trains best on this device in a fixed time?

    python -m tune --trials 50                      # a study on the shipped corpus, auto device and space
    python -m tune report --study-name NAME         # regenerate tables and plots from the storage
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gptcore.cliutil import EXIT_INTERRUPTED, Parser, run
from gptcore.errors import UserError
from tune.space import PARAMS, SPACES, parse_range

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "wizard_of_oz.txt"
_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'8GiB' -> 8589934592, '600MB' -> 600000000, '1024' -> 1024 bytes."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 8GiB or 600MB, got {text!r}")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Flags of the study command."""
    p = Parser(prog="python -m tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=_positive(int), default=50, help="trials the study should hold (default 50)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trial-seconds", type=_positive(float), default=None,
                        help="training seconds per trial, the same for every trial (default 30)")
    budget.add_argument("--trial-steps", type=_positive(int), default=None, help="training steps per trial instead")
    p.add_argument("--trial-timeout", type=_positive(float), default=None,
                   help="kill a trial after this many seconds (default 3 x budget + 60 s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="corpus: .txt file or prepared folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--study-name", default=None, help="default: <device>-<corpus>")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the results folder)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results/)")
    p.add_argument("--space", default="auto", help=f"{'|'.join(SPACES)}|auto|FILE.json (default auto)")
    for name in PARAMS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"space_{name}", type=parse_range, default=None,
                       metavar="LOW,HIGH", help=f"override the {name} range (one value pins it)")
    p.add_argument("--objective", choices=["loss", "throughput"], default="loss")
    p.add_argument("--memory-limit", type=parse_size, default=None,
                   help="emulate a smaller device, e.g. 8GiB or 600MB (CUDA: allocator fraction; CPU: rlimit)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="random: the baseline to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on a GPU that has it, else float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    """Flags of `python -m tune report`."""
    p = Parser(prog="python -m tune report", description="Regenerate a study's tables and plots from its storage.")
    p.add_argument("--study-name", default=None, help="default: the only study under --results")
    p.add_argument("--storage", default=None, help="default: SQLite in the study's results folder")
    p.add_argument("--results", type=Path, default=Path("results"))
    return p


def main_report(argv: list[str]) -> int:
    """Rebuild trials.csv, summary.md, best.json and plots from the storage alone."""
    import optuna

    from tune.report import readable, write_report

    args = build_report_parser().parse_args(argv)
    name = args.study_name
    if name is None:
        found = sorted(p.parent.name for p in args.results.glob("*/study.db"))
        if len(found) != 1:
            raise UserError(f"--study-name is needed: {len(found)} studies under {args.results} "
                            f"({', '.join(found) or 'none'})")
        name = found[0]
    folder = args.results / name
    storage = args.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    if args.storage is None and not (folder / "study.db").exists():
        raise UserError(f"{folder / 'study.db'}: no such study storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {name!r} in {storage}") from None
    except Exception as exc:  # sqlalchemy, a missing driver, a bad URL: this storage cannot be read
        raise UserError(f"--storage {storage}: cannot open ({type(exc).__name__})") from None
    df = write_report(study, folder)
    print(readable(df).to_string(index=False))
    print(f"wrote {folder}/trials.csv, summary.md, best.json and plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        return main_report(argv[1:])
    args = build_parser().parse_args(argv)
    from tune.report import readable, trials_frame
    from tune.study import TuneSettings, run_study

    overrides = {n: getattr(args, f"space_{n}") for n in PARAMS if getattr(args, f"space_{n}") is not None}
    settings = TuneSettings(
        trials=args.trials, trial_seconds=args.trial_seconds or (None if args.trial_steps else 30.0),
        trial_steps=args.trial_steps, data=args.data, device=args.device, study_name=args.study_name,
        storage=args.storage, results=args.results, space=args.space, space_overrides=overrides,
        objective=args.objective, memory_limit=args.memory_limit, pruner=args.pruner, sampler=args.sampler,
        seed=args.seed, dtype=args.dtype, trial_timeout=args.trial_timeout, progress=not args.no_progress,
    )
    outcome = run_study(settings)
    df = readable(trials_frame(outcome.study))
    print(df.to_string(index=False))
    print(f"results: {outcome.results_dir} (trials.csv, summary.md, best.json, plots)")
    return EXIT_INTERRUPTED if outcome.interrupted else 0


if __name__ == "__main__":
    run(main, prog="python -m tune")
