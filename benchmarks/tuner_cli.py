"""`python -m benchmarks tuner record|replay|cost`: the flags and what each action writes."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd

from benchmarks.flags import add_output_flags, progress_mode
from benchmarks.progress import LineCounter
from benchmarks.tuner_cost import NOISE
from benchmarks.tuner_table import DEFAULT_TABLE, RECORDED_TABLE, RecordSettings, check_out, load_table, record
from gptcore.cliutil import int_range, non_negative_float, positive_int
from gptcore.errors import UserError
from tune.core.confirm import CONFIRM_RULES
from tune.search.strategy import PRUNERS, SAMPLERS

REPLAY_SAMPLERS = (*SAMPLERS, "gp", "tpe-startup10", "tpe-startup5")  # replay-only, beside the tuner's own


def strategies_flag(text: str) -> tuple:
    """'tpe+asha,random+none,tpe+median:3' -> Strategy tuple (sampler + pruner, optionally :rungs); 'all'."""
    from benchmarks.tuner_replay import GP_STRATEGIES, STRATEGIES, Strategy

    if text.strip() == "all":
        return (*STRATEGIES, *GP_STRATEGIES)
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        head, _, rungs = item.partition(":")
        sampler, _, pruner = head.partition("+")
        if sampler not in REPLAY_SAMPLERS or pruner not in PRUNERS or (rungs and not (rungs.isdigit() and
                                                                                    int(rungs) >= 1)):
            raise argparse.ArgumentTypeError(
                f"expected SAMPLER+PRUNER[:RUNGS] items (samplers {', '.join(REPLAY_SAMPLERS)}; pruners "
                f"{', '.join(PRUNERS)}) or all, got {item!r}")
        out.append(Strategy(sampler, pruner, int(rungs) if rungs else None))
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one SAMPLER+PRUNER, got {text!r}")
    return tuple(out)


strategies_flag.__name__ = "strategy list"


def add_tuner_parser(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """`tuner record` and `tuner replay` under the benchmarks command."""
    t = sub.add_parser("tuner", help="replay tuner studies against recorded learning curves (samplers, pruners)")
    actions = t.add_subparsers(dest="action", required=True, parser_class=parser_class)
    r = actions.add_parser("record", help="record the learning curves with the tuner itself (an hour or so)")
    defaults = RecordSettings()
    r.add_argument("--trials", type=positive_int, default=defaults.trials,
                   help=f"configurations to record (default {defaults.trials})")
    r.add_argument("--budget", default=defaults.budget, help=f"target per configuration (default {defaults.budget})")
    r.add_argument("--rungs", type=int_range(1, 8), default=defaults.rungs,
                   help=f"losses recorded per run below the target, for the replayed pruners "
                        f"(default {defaults.rungs})")
    r.add_argument("--reduction-factor", type=int_range(2, 10), default=defaults.reduction_factor,
                   help="rungs at target / factor**k: the replay can then compare plans of this factor")
    r.add_argument("--workers", type=positive_int, default=defaults.workers,
                   help="trials at once, one core each on a CPU (default 2)")
    r.add_argument("--seed", type=int, default=defaults.seed,
                   help=f"seed of the recording study's random sampler (default {defaults.seed})")
    r.add_argument("--data", type=Path, default=defaults.data, help=f"corpus to train on (default {defaults.data})")
    r.add_argument("--space", default=defaults.space,
                   help="the tuner's search space: small, medium, large, auto or a JSON file of ranges "
                        f"(default {defaults.space})")
    r.add_argument("--table", type=Path, default=RECORDED_TABLE,
                   help=f"the CSV to write (default {RECORDED_TABLE}; replay it with --table)")
    r.add_argument("--out", type=Path, default=defaults.results,
                   help=f"results folder the recording study runs in (default {defaults.results})")
    add_output_flags(r, out=False)

    p = actions.add_parser("replay", help="replay whole studies per strategy and seed against a recorded table")
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE,
                   help=f"recorded curves to replay against (default {DEFAULT_TABLE}; make your own with "
                        f"`tuner record`)")
    p.add_argument("--strategies", type=strategies_flag, default=None,
                   help="SAMPLER+PRUNER[:RUNGS],... or all (default: every sampler and pruner the tuner offers; "
                        "all adds gp+none and gp+asha, ~1 h per 100 seeds)")
    p.add_argument("--seeds", type=int_range(1, 10_000), default=30, help="studies per strategy (default 30)")
    p.add_argument("--trials", type=int_range(1, 10_000), default=50, help="trials per study (default 50)")
    add_output_flags(p)

    c = actions.add_parser("cost", help="the answer a study would name (best.json) against its study time, "
                                        "references and confirmation runs charged, with re-run noise")
    c.add_argument("--table", type=Path, default=DEFAULT_TABLE, help=f"recorded curves (default {DEFAULT_TABLE})")
    c.add_argument("--strategies", type=strategies_flag, default=None,
                   help="SAMPLER+PRUNER[:RUNGS],... (default: the tuner's defaults and those before #22, each "
                        "with its own references and confirmation)")
    c.add_argument("--seeds", type=int_range(1, 10_000), default=100, help="studies per strategy (default 100)")
    c.add_argument("--first-seed", type=int_range(0, 10**6), default=0,
                   help="seed of the first study (default 0): other seeds check a choice made on these")
    c.add_argument("--references-at", choices=("first", "last"), default=None,
                   help="references before the search (whole), or after it (the tuner's: judged at their rungs by "
                        "the prediction with --pruner predict, else whole); "
                        "default: each policy's own, last for --strategies")
    c.add_argument("--confirm-rule", choices=CONFIRM_RULES, default=None,
                   help="confirmation as the tuner's --confirm-rule; default: each policy's own, sequential for "
                        "--strategies")
    c.add_argument("--trials", type=int_range(1, 10_000), default=20, help="trials per study (default 20)")
    c.add_argument("--references", type=int_range(0, 20), default=2,
                   help="reference runs each study makes first, one target budget each (default 2: the tuner's)")
    c.add_argument("--confirm", type=int_range(0, 50), default=2,
                   help="configurations confirmed after the search (default 2: the tuner's --confirm)")
    c.add_argument("--noise", type=non_negative_float, default=NOISE,
                   help=f"run-to-run sd of the val loss at the target (default {NOISE}: measured with --confirm)")
    add_output_flags(c)


def cmd_tuner(args: argparse.Namespace) -> int:
    """Record a table, or replay studies against one and write the comparison."""
    if args.action == "record":
        check_out(args.table)
        settings = RecordSettings(trials=args.trials, budget=args.budget, rungs=args.rungs,
                                  reduction_factor=args.reduction_factor, workers=args.workers,
                                  seed=args.seed, data=args.data, results=args.out, out=args.table,
                                  space=args.space)
        print(f"wrote {record(settings, quiet=args.quiet)} and {args.table.with_suffix('.json')}")
        return 0
    if args.action == "cost":
        return cost_command(args)
    return replay_command(args)


def cost_command(args: argparse.Namespace) -> int:
    """Replay studies as best.json answers them; print and write the answer's regret at 4, 8 and 16 budgets."""
    from tqdm import tqdm

    from benchmarks.report import write_frame
    from benchmarks.tuner_cost import compare_answers, summarise_answers
    from benchmarks.tuner_replay import check_strategies
    from gptcore.files import atomic_write_text

    table = load_table(args.table)
    policies = cost_policies(args, table)
    check_strategies(table, tuple(p.strategy for p in policies))
    mode = progress_mode(args)
    total = len(policies) * args.seeds
    with tqdm(total=total, desc="cost", unit="study", disable=mode != "bar") as bar:
        counter = LineCounter(mode, "cost", total, args.seeds, "studies") if mode == "lines" else bar
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = compare_answers(table, policies, seeds, args.trials, progress=counter)
    summary = summarise_answers(runs)
    text = summary.to_markdown(index=False, floatfmt=".4g")
    print(text)
    command = (f"python -m benchmarks tuner cost --seeds {args.seeds} --first-seed {args.first_seed} --trials "
               f"{args.trials} --references {args.references} --confirm {args.confirm} --noise {args.noise} "
               f"--table {args.table}" + "".join(f" --{f.replace('_', '-')} {getattr(args, f)}" for f in
                                                 ("references_at", "confirm_rule") if getattr(args, f)))
    md = "\n".join(["# The answer's cost", "", f"`{command}`", "",
                     "- regret@Tb: median (IQR) over seeds of the true regret of the answer the study names after T "
                     "target budgets of study time (references first, then the search, then the confirmation runs); "
                     "inf: no answer yet.",
                     "- study budgets: the whole study's median length; budgets to within noise: median time until "
                     "the answer was within the noise of the best recorded configuration (inf: never).", "", text, ""])
    paths = [write_frame(runs, args.out / "tuner_cost.csv"), atomic_write_text(args.out / "tuner_cost.md", md)]
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cost_policies(args: argparse.Namespace, table) -> tuple:
    """The policies `tuner cost` compares: --strategies with the flags' spending, else the tuner's defaults and
    those before #22; --references, --confirm, --noise (and --references-at, --confirm-rule when given) apply to
    every one."""
    from dataclasses import replace

    from benchmarks.tuner_cost import Policy, Spend, before, now

    base = [Policy(s, Spend()) for s in args.strategies] if args.strategies else [before(table), now()]
    out = []
    for p in base:
        spend = replace(p.spend, references=args.references, confirm=args.confirm, noise=args.noise)
        if args.references_at:
            spend = replace(spend, references_last=args.references_at == "last")
        if args.confirm_rule:
            spend = replace(spend, sequential=args.confirm_rule == "sequential")
        out.append(replace(p, spend=spend))
    return tuple(out)


def replay_command(args: argparse.Namespace) -> int:
    """Replay, print the summary table, write the per-study CSV, a markdown summary and the regret plot."""
    from tqdm import tqdm

    from benchmarks.report import write_frame
    from benchmarks.tuner_replay import TODAY, check_strategies, compare, summarise
    from gptcore.files import atomic_write_text

    table = load_table(args.table)
    strategies = args.strategies or default_strategies(args.quiet)
    if TODAY not in strategies:
        strategies = (TODAY, *strategies)  # every ratio is against today's defaults
    if any(s.sampler == "gp" for s in strategies):
        _need("scipy", "the gp sampler")
    if any(s.sampler == "cmaes" for s in strategies):
        _need("cmaes", "the cmaes sampler")
    check_strategies(table, strategies)
    mode = progress_mode(args)
    total = len(strategies) * args.seeds
    with tqdm(total=total, desc="replay", unit="study", disable=mode != "bar") as bar:
        # Off a terminal: a plain line each time a strategy's seeds are done, not a redrawn bar.
        counter = LineCounter(mode, "replay", total, args.seeds, "studies") if mode == "lines" else bar
        runs = compare(table, strategies, args.seeds, args.trials, progress=counter)
    summary = summarise(runs)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format",
                           lambda v: f"{v:.4g}"):
        print(summary.to_string(index=False))
    paths = [write_frame(runs.drop(columns="curve"), args.out / "tuner_replay.csv")]
    md = args.out / "tuner_replay.md"
    atomic_write_text(md, replay_markdown(summary, table.meta, args, table.best))
    paths += [md, plot_regret(runs, table.run_seconds, args.out / "tuner_replay.png")]
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def default_strategies(quiet: bool = False) -> tuple:
    """Every strategy the tuner offers (tune.search.strategy); cmaes only where its package is installed (said so)."""
    from benchmarks.tuner_replay import STRATEGIES

    if not _installed("cmaes"):
        if not quiet:
            print("note: the cmaes rows are left out (pip install -e '.[replay]' to include them)")
        return tuple(s for s in STRATEGIES if s.sampler != "cmaes")
    return STRATEGIES


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _need(module: str, what: str) -> None:
    if not _installed(module):
        raise UserError(f"--strategies: {what} needs {module}: pip install -e '.[replay]' (or leave it out of "
                        f"--strategies)")


def replay_markdown(summary: pd.DataFrame, meta: dict, args: argparse.Namespace, best: float) -> str:
    """The comparison as markdown: how it was made, what each column means, the table."""
    return "\n".join([
        "# Tuner replay", "",
        f"`python -m benchmarks tuner replay --seeds {args.seeds} --trials {args.trials}` against "
        f"`{args.table.name}` ({meta['rows']} configurations recorded on {meta['device']}, "
        f"{meta.get('threads_per_trial')} thread(s) per trial, target {table_budget(meta)}, "
        f"recorded rungs {', '.join(f'{f:.3g}' for f in meta['rungs'])} of the target; best recorded val loss "
        f"{best:.4f}).", "",
        "- regret@N: median over seeds of (best val loss at the target after N trials - best recorded); IQR@N its "
        "interquartile range; budgets@N the median simulated time of those N trials, in target budgets.",
        "- vs today: median regret / the median regret of the defaults before this benchmark (tpe-startup10 + asha: "
        "Optuna 5's TPESampler, multivariate by default, 10 random start-up trials).",
        "- regret@Tb: median regret after T target budgets of simulated time (equal time, not equal trials).",
        "- budgets to 1%: median simulated time until a configuration within 1 % of the best recorded loss "
        "reached the target (inf: not within the trials); reached 1%: in how many seeds.", "",
        summary.to_markdown(index=False, floatfmt=".4g"), "",
        "```json", json.dumps(meta, indent=1), "```", ""])


def table_budget(meta: dict) -> str:
    """'12 s' or '400 steps'."""
    from tune.core.budget import Budget

    return str(Budget(meta["budget_amount"], meta["budget_unit"]))


def plot_regret(runs: pd.DataFrame, budget_s: float, path: Path) -> Path:
    """Median simple regret (with quartiles) against simulated study time, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.tuner_replay import DEFAULT, TODAY
    from gptcore.files import atomic_write

    grid = np.linspace(0, float(runs["clock_budgets"].median()), 80)[1:]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab20").colors
    for i, (name, group) in enumerate(runs.groupby("strategy", sort=False)):
        curves = np.stack([_regret_on(grid, c, budget_s) for c in group["curve"]])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # before any seed's first completed trial: no value yet
            med = np.nanmedian(curves, axis=0)
            low, high = np.nanpercentile(curves, 25, axis=0), np.nanpercentile(curves, 75, axis=0)
        # Today's defaults dashed, the defaults thick: the two lines the table's ratios compare.
        style = {TODAY.name: dict(ls="--", lw=2, color="black"), DEFAULT.name: dict(lw=2.5, color="tab:red")}.get(
            name, dict(lw=1, color=colours[(2 * i) % 20 + (i // 10) % 2]))
        ax.step(grid, med, where="post", label=name, **style)
        if name in (TODAY.name, DEFAULT.name):
            ax.fill_between(grid, low, high, step="post", alpha=0.12, color=style["color"])
    ax.set_xlabel("simulated study time (target budgets)")
    ax.set_ylabel("simple regret (val loss above the best recorded)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Replayed tuner studies: median regret over seeds (quartiles shaded for the two defaults)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _regret_on(grid, curve, budget_s):
    import numpy as np

    clock, regret = curve
    idx = np.searchsorted(clock / budget_s, grid, side="right") - 1
    out = np.where(idx >= 0, regret[np.clip(idx, 0, None)], np.nan)
    return np.where(np.isfinite(out), out, np.nan)
