"""python -m tune: which GPT configuration trains best on this device, for the training you will run?

    python -m tune --trials 50                      # the shipped corpus, auto device, space and target budget
    python -m tune --budget 1h --trials 50          # the best configuration for a one-hour training run
    python -m tune report --study-name NAME         # regenerate tables and plots from the storage
    python -m tune max-batch --preset course --block-size 64,128,256 --memory-limit 8GiB   # the largest batch
    python -m tune card [STUDY]  # one HTML page: this device's matmul speed, best configuration, OOM frontier
    python -m tune compare STUDY_A STUDY_B  # studies side by side: best configs, tokens/s, speed-ups

Each subcommand's flags: python -m tune SUBCOMMAND --help. Installed (pip install -e .), `gptcore-tune` is the
same command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gptcore.cliutil import (
    EXIT_INTERRUPTED,
    Parser,
    add_quiet,
    console,
    index_list,
    int_range,
    non_negative_int,
    parse_size,
    positive_float,
    positive_int,
    prog,
    seed,
)
from gptcore.config import COMPILE_MODES, PRESETS
from gptcore.corpus import DEFAULT_CORPUS
from gptcore.errors import UserError
from tune.core import studyfile
from tune.core.budget import DEFAULT_BUDGET, SCHEDULES, Budget, parse_budget
from tune.core.confirm import CONFIRM_RULES, CONFIRM_RUNS, SETTLED
from tune.core.space import PARAMS, SPACES, load_space, parse_param_flag, parse_range
from tune.search.settings import (
    DEFAULT_CONFIRM,
    DEFAULT_CONFIRM_RULE,
    DEFAULT_KEEP_MODELS,
    ExecArgs,
    OutputArgs,
    SearchArgs,
    StoreArgs,
    TrainingArgs,
    TuneSettings,
)
from tune.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS
from tune.search.warmstart import WARM_START_TOP
from tune.store.names import check_study_name

if TYPE_CHECKING:
    from tune.search.session import StudyOutcome

DEFAULT_DATA = DEFAULT_CORPUS
PROG = "python -m tune"
RESULTS_HELP = "the folder holding each study's results folder (default results/)"


def budget_flag(text: str) -> Budget:
    """A flag type for --budget: '2m', '90s', '1h30m', '5000steps'."""
    try:
        return parse_budget(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--budget {text!r}: ")) from None


def max_time_flag(text: str) -> float:
    """A flag type for --max-time: a duration ('45m', '2h', '90s'), in seconds."""
    try:
        budget = parse_budget(text)
    except UserError:
        budget = None
    if budget is None or budget.seconds is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 45m, 2h or 1h30m, got {text!r}")
    return budget.seconds


def references_flag(text: str) -> tuple[str, ...]:
    """A flag type for --references: comma-separated preset names, or 'none'."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if text.strip().lower() == "none":
        return ()
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected preset names from {', '.join(PRESETS)} or none, got {text!r}")
    return names


def study_name_flag(text: str) -> str:
    """A flag type for --study-name: tune.store.names' rule."""
    try:
        return check_study_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(f"{str(exc).removeprefix(f'--study-name {text!r}: ')}, got {text!r}") from None


def log_to_flag(text: str) -> list[str]:
    """--log-to: tensorboard, mlflow, or both comma-separated."""
    from tune.report.tracking import parse_log_to

    try:
        return parse_log_to(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--log-to {text!r}: ")) from None


def model_flag(text: str) -> str:
    """A flag type for --model: FILE.py:Class or package.module:Class (gptcore.config.split_model_spec's form);
    "" (the default) is gptcore's GPT."""
    from gptcore.config import split_model_spec

    if text == "":
        return text
    try:
        split_model_spec(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FILE.py:Class or package.module:Class, got {text!r}") from None
    return text


def workers_flag(text: str) -> int | None:
    """A flag type for --workers: a positive integer, or 'auto' (-> None: one per GPU, one on a CPU)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Flags of the study command."""
    p = Parser(prog=prog(PROG), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=positive_int, default=50, help="trials the study should hold (default 50)")
    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_BUDGET.items())
    p.add_argument("--budget", type=budget_flag, default=None,
                   help=f"the training you mean to run, per configuration: 90s, 10m, 1h, or 5000steps; the winner "
                        f"is the best at this budget (default by device: {defaults})")
    p.add_argument("--rungs", type=int_range(1, 8), default=None,
                   help="evaluation rungs up to the target, each reduction-factor times the last (default: up to "
                        "4, the smallest at least 4 s or 50 steps)")
    p.add_argument("--reduction-factor", type=int_range(2, 10), default=3,
                   help="only the best 1/this of a rung train on to the next (default 3)")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="cosine",
                   help="learning-rate schedule against the target, the same in every trial and in best.json")
    p.add_argument("--references", type=references_flag, default=None,
                   help="presets run after the search, to the target unless --pruner predict foresees at a rung that "
                        "they lose to the answer (default: course-default,baby; on a GPU also gpu; 'none' for none)")
    p.add_argument("--warm-start", default=None, metavar="SOURCE",
                   help=f"start with the best configurations (up to {WARM_START_TOP}) of an earlier study that fit "
                        "this search space: its results folder, its trials.csv, or its study name (in --storage, "
                        "else in results/NAME/study.db); they count toward --trials")
    p.add_argument("--confirm", type=non_negative_int, default=DEFAULT_CONFIRM, metavar="K",
                   help=f"once the study is done, train its best K configurations (trials or references) "
                        f"up to {CONFIRM_RUNS} more times each with fresh seeds and pick the winner by the mean "
                        f"(default {DEFAULT_CONFIRM}; 0: none)")
    p.add_argument("--confirm-rule", choices=CONFIRM_RULES, default=DEFAULT_CONFIRM_RULE,
                   help="sequential: confirm the best once, then more runs only while the next may still be "
                        f"better by more than {SETTLED} on average, given the run-to-run noise measured so far; all: "
                        f"every run of the best K (default "
                        f"{DEFAULT_CONFIRM_RULE})")
    p.add_argument("--no-save-models", action="store_true",
                   help="do not keep the models of the trials that train to the target (best-model/ is one of them)")
    p.add_argument("--keep-models", type=non_negative_int, default=DEFAULT_KEEP_MODELS, metavar="K",
                   help=f"keep the models of the best K runs besides best-model/; the others are deleted as the "
                        f"study goes (those it may still confirm stay until confirmation is over). Default "
                        f"{DEFAULT_KEEP_MODELS}: the default --confirm {DEFAULT_CONFIRM} top configurations and a "
                        f"runner-up, so the disk holds at most {DEFAULT_KEEP_MODELS + 1} models whatever --trials; 0: "
                        f"only best-model/")
    p.add_argument("--log-to", type=log_to_flag, action="extend", default=None, metavar="TRACKER",
                   help="also log every run (trials, references, confirmation runs) with its parameters and "
                        "training curve to tensorboard and/or mlflow (repeat the flag or comma-separate), as local "
                        "files in the study's results folder: RESULTS/STUDY/tensorboard/, RESULTS/STUDY/mlflow.db "
                        "(pip install 'gptcore-tune[tensorboard]' or '[mlflow]')")
    p.add_argument("--trial-timeout", type=positive_float, default=None,
                   help="kill a trial after this many seconds (default 3 x a time budget + 120 s; 1 h for steps)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="corpus: a .txt file or a prepared folder (default: the shipped wizard_of_oz.txt)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--study-name", type=study_name_flag, default=None,
                   help="the study's name in the storage; the same name resumes it (default: <device>-<corpus>)")
    p.add_argument("--storage", default=None,
                   help="where the study lives (default: SQLite in the results folder, for one tuner process); "
                        "journal:PATH or a PATH ending .journal/.log for several tuners on one machine or a shared "
                        "filesystem; postgresql://user:password@host/db for many machines (pip install -e "
                        "'.[postgres]')")
    p.add_argument("--workers", type=workers_flag, default=1,
                   help="trials run at once by this tuner, each owning a GPU or an equal share of the CPU cores "
                        "(default 1; auto: one per GPU)")
    p.add_argument("--gpus", type=index_list, default=None, metavar="0,2,3",
                   help="the CUDA devices the workers use, one each (default: every visible GPU)")
    p.add_argument("--cores", type=index_list, default=None, metavar="0-7",
                   help="the CPU cores this tuner shares out among its workers (default: all it may use); give "
                        "two tuners on one machine disjoint sets")
    p.add_argument("--max-time", type=max_time_flag, default=None, metavar="DURATION",
                   help="wall-clock cap on this tuner's run, e.g. 45m or 2h: no new run is started after it, the "
                        "running ones finish, and best.json, best-model/ and summary.md hold the answer so far; "
                        "the same command resumes the study (default: none)")
    p.add_argument("--heartbeat-interval", type=int_range(1, 3600), default=10,
                   help="seconds between the liveness records of a running trial (default 10)")
    p.add_argument("--grace-period", type=int_range(2, 86400), default=60,
                   help="a running trial with no liveness record for this many seconds is failed and queued again "
                        "by any tuner on the study (default 60; must exceed the heartbeat interval)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the study's results go to RESULTS/STUDY_NAME/ (default results/)")
    p.add_argument("--model", type=model_flag, default="", metavar="FILE.py:Class",
                   help="tune your own model class instead of gptcore's GPT: FILE.py:Class or package.module:Class, "
                        "built from a config of the searched fields (docs/your-model.md); checked by a one-step "
                        "probe before the study starts")
    p.add_argument("--space", default="auto",
                   help=f"search space: a named one ({', '.join(SPACES)}), auto (by device) or a JSON file of "
                        f"ranges (default auto)")
    for name in PARAMS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"space_{name}", type=parse_range, default=None,
                       metavar="LOW,HIGH",
                       help=f"search {name} from LOW to HIGH instead of the space's range; one value pins it")
    p.add_argument("--param", type=parse_param_flag, action="append", default=None, metavar="NAME=SPEC",
                   help="also search another ModelConfig/TrainConfig field (repeatable; several: separated by ';'): "
                        "dropout=0,0.3 (a range of the field's type), weight_decay=1e-3,0.3,log, "
                        "warmup_iters=0,100,step=10, activation=relu|gelu, beta2=0.9,0.999, dropout=0.1 (pinned), "
                        "or the space file's JSON form (docs/search-space.md)")
    p.add_argument("--objective", choices=["loss", "throughput"], default="loss",
                   help="what the study minimises or maximises: loss, the validation loss at the target budget; "
                        "throughput, training tokens per second (default loss)")
    p.add_argument("--memory-limit", type=parse_size, default=None,
                   help="emulate a smaller device, e.g. 8GiB or 600MB (CUDA: allocator fraction; CPU: rlimit)")
    p.add_argument("--no-predict", action="store_true",
                   help="run configurations predicted not to fit the memory limit instead of skipping them (the "
                        "prediction is still made and recorded: to check it)")
    p.add_argument("--pruner", choices=PRUNERS, default=DEFAULT_PRUNER,
                   help=f"predict: asynchronous successive halving, and a trial stops where its loss at the target, "
                        f"predicted from its rung loss, cannot beat the best; asha: successive halving alone; median; "
                        f"hyperband; none (default {DEFAULT_PRUNER}, chosen by `python -m benchmarks tuner cost`)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help=f"tpe: multivariate TPE; tpe-univariate; random and qmc (Sobol): baselines; cmaes (pip "
                        f"install cmaes) (default {DEFAULT_SAMPLER}, chosen by the replay benchmark)")
    p.add_argument("--seed", type=seed, default=0,
                   help="random seed of the sampler and of every trial's training (confirmation runs use SEED+1, "
                        "SEED+2, ...): one tuner on SQLite with the same seed draws the same configurations "
                        "(default 0)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="training precision of every trial: auto, bfloat16 on a GPU that has it, else float32 "
                        "(default auto)")
    p.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                   help="how every trial compiles its training step: none (eager), default (torch.compile), graphs "
                        "(CUDA graphs, GPU only) or auto (compile only when the trial's budget pays back the "
                        "compile time; the default). Compile time is booked apart from the training budget")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (a bar shows only when stderr is a terminal; otherwise a line per trial)")
    p.add_argument("--config", type=Path, default=None, metavar="STUDY.toml",
                   help="a TOML file of this command's flags, each key a flag's long name without its dashes "
                        "(trials = 30, budget = \"10m\", n-layer = [2, 8], no-save-models = true); flags on the "
                        "command line override it; its text is recorded in the study")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (target, rungs, cost), the search space and the predicted memory of a few "
                        "sampled configurations, then exit without creating the study or any file")
    add_quiet(p)
    return p


def build_report_parser() -> argparse.ArgumentParser:
    """Flags of `python -m tune report`."""
    p = Parser(prog=f"{prog(PROG)} report", description="Regenerate a study's tables and plots from its storage.")
    p.add_argument("study", nargs="?", default=None, metavar="STUDY",
                   help="a study's results folder or its name, as card and compare take it (default: --study-name, "
                        "else the only study under --results)")
    p.add_argument("--study-name", type=study_name_flag, default=None,
                   help="the study to report (default: the only study under --results)")
    p.add_argument("--storage", default=None,
                   help="where the study lives, as given to the tuner (default: SQLite in the study's results "
                        "folder)")
    p.add_argument("--results", type=Path, default=Path("results"), help=RESULTS_HELP)
    add_quiet(p)
    return p


def main_report(argv: list[str]) -> int:
    """Rebuild trials.csv, summary.md, best.json and plots from the storage alone."""
    from gptcore.files import check_room
    from tune.report.frame import readable
    from tune.report.outputs import write_report
    from tune.store.load import load_named, load_study

    parser = build_report_parser()
    args = parser.parse_args(argv)
    if args.study is not None and args.study_name is not None:
        parser.error(f"STUDY {args.study} and --study-name {args.study_name}: name the study once")
    loaded = load_named(args.study, storage=args.storage, results=args.results) if args.study is not None else \
        load_study(args.study_name, storage=args.storage, results=args.results)
    study, folder = loaded.study, loaded.folder
    check_room(folder, "report")
    df = write_report(study, folder)
    if not args.quiet:
        print(readable(df).to_string(index=False))
    print(f"wrote {folder}/trials.csv, summary.md, best.json and plots")
    return 0


def build_maxbatch_parser() -> argparse.ArgumentParser:
    """Flags of `python -m tune max-batch`."""
    from gptcore.cliutil import add_config_flags
    from tune.memory import maxbatch

    p = Parser(prog=f"{prog(PROG)} max-batch", conflict_handler="resolve",
               description="The largest batch that trains --steps full optimizer steps at each block size under "
                           "the memory limit, with --margin to spare: bracketed by the memory predictor, confirmed "
                           "by bisection, each probe in its own process. The model: --preset < --config < flags; "
                           "its batch size, step budget and evaluation are the probes' own.")
    p.add_argument("--preset", choices=list(PRESETS), default="baby",
                   help="named starting configuration of the model (default baby)")
    p.add_argument("--config", type=Path, help="JSON config (e.g. the tuner's best.json); flags override it")
    add_config_flags(p)
    # Replaces the model's --block-size flag (conflict_handler="resolve"): one block size or several.
    p.add_argument("--block-size", dest="block_sizes", type=maxbatch.block_size_list, default=None,
                   metavar="64,128,256", help="block size(s) to search, comma-separated (default: the model's)")
    p.add_argument("--memory-limit", type=parse_size, default=None,
                   help="the memory a run may hold, e.g. 8GiB or 600MB (CUDA: allocator fraction, default the "
                        "card less 512 MiB; CPU: rlimit, required)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="corpus (.txt or prepared folder): the vocabulary and the training batches")
    p.add_argument("--steps", type=int_range(2, 10**6), default=maxbatch.DEFAULT_STEPS,
                   help=f"full optimizer steps each probe trains (default {maxbatch.DEFAULT_STEPS}; 2 at least: "
                        f"AdamW's state appears in the first)")
    p.add_argument("--margin", type=maxbatch.margin_flag, default=maxbatch.DEFAULT_MARGIN,
                   help=f"a batch counts only if its peak stays this share under the limit (default "
                        f"{maxbatch.DEFAULT_MARGIN})")
    p.add_argument("--out", type=Path, default=maxbatch.DEFAULT_OUT,
                   help=f"JSON of the settings, machine and rows (default {maxbatch.DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true", help="no line per probe on stderr")
    add_quiet(p)
    return p


def main_maxbatch(argv: list[str]) -> int:
    """Search the largest batch per block size, print the table, write the JSON."""
    import time

    from tune.exec.runner import TrialRunner
    from tune.memory import maxbatch

    args = build_maxbatch_parser().parse_args(argv)
    args.no_progress = args.no_progress or args.quiet
    runner = TrialRunner()
    settings = maxbatch.settings_from_args(args, runner)
    t0 = time.perf_counter()
    try:
        rows = maxbatch.run_max_batch(settings, runner, args.out)
    except maxbatch.ProbeFailed as exc:
        print(f"{prog(PROG)} max-batch: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    path = maxbatch.write_json(args.out, settings, rows, {"preset": args.preset, "config": args.config,
                                                          "seconds": seconds})
    if not args.quiet:
        print(f"{settings.env['device_name']}: memory limit {settings.limit / 2**20:,.0f} MiB, margin "
              f"{settings.margin:.0%}: a batch fits if {settings.steps} steps peak at or under "
              f"{settings.allowed / 2**20:,.0f} MiB ('?': the next batch up was not confirmed)")
        print(maxbatch.table(rows))
    print(f"wrote {path} ({seconds:.0f} s)")
    short = [str(r.block_size) for r in rows if not r.max_batch]
    if short:  # predicted to fit at batch 1, but it did not
        print(f"{prog(PROG)} max-batch: block size {', '.join(short)}: not even batch 1 trains within the limit "
              f"less the margin", file=sys.stderr)
    return 1 if short else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    from tune.store._optuna import quiet_optuna

    quiet_optuna()  # the console's settings, set here: library modules leave warnings and logging alone
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args = studyfile.parse_args(parser, argv)  # --config's flags under the command line's
    if args.grace_period <= args.heartbeat_interval:
        parser.error(f"--grace-period {args.grace_period}: must be longer than --heartbeat-interval "
                     f"{args.heartbeat_interval}")
    if args.dry_run:  # the plan, the space and a few predictions; nothing created
        from tune.search.dryrun import dry_run

        dry_run(settings_from_args(args))
        return 0
    from tune.report.frame import readable, trials_frame

    try:
        outcome = run_study_or_one_line(settings_from_args(args))
    except UserError as exc:  # a value the flag's parser took but a later check refused: from --config's file?
        raise studyfile.blame(exc, args) from None
    if not args.quiet:
        print(readable(trials_frame(outcome.study)).to_string(index=False))
    print(f"results: {outcome.results_dir} (summary.md, trials.csv, best.json, best-model/, plots)")
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 1 if outcome.stopped_because else 0  # stopped short of --trials by the error brake


def run_study_or_one_line(settings: TuneSettings) -> StudyOutcome:
    """run_study(settings), with a disk that fills up on the way ended in one line naming the file and the space a
    resume needs: the trial it hit was recorded as interrupted (or is, by the resume) and runs again."""
    from tune.search.session import RESULTS_ROOM, full_disk
    from tune.search.study import run_study

    try:
        return run_study(settings)
    except Exception as exc:
        where = full_disk(exc)
        if where is None:
            raise
        raise UserError(f"{where}: no space left on its disk; free at least {RESULTS_ROOM // 2**20} MiB there and "
                        f"run the same command again to resume the study (the interrupted trial runs again)") from None


def settings_from_args(args: argparse.Namespace) -> TuneSettings:
    """The study's settings from its parsed flags, grouped once here (the space's file and flags checked now)."""
    overrides = {n: getattr(args, f"space_{n}") for n in PARAMS if getattr(args, f"space_{n}") is not None}
    # --param entries in order, a later one for the same name winning: each flag's list of (name, spec), and a
    # study file's (its one value, not appended) as loose pairs.
    pairs = [pair for item in args.param or [] for pair in (item if isinstance(item, list) else [item])]
    params = dict(pairs)
    # The device only picks the base space; the file and the flags are checked now, before the device probe. With
    # --model, a --param may name a field the class declares: checked once its probe has said which (session.choose).
    if not args.model:
        load_space(args.space, "cpu", None, overrides, params)
    from tune.report.tracking import check_available

    log_to = tuple(dict.fromkeys(args.log_to or ()))  # each tracker once, in the order given
    check_available(log_to)  # a missing extra is refused now, before anything is created
    return TuneSettings(
        search=SearchArgs(trials=args.trials, data=args.data, space=args.space, space_overrides=overrides,
                          objective=args.objective, pruner=args.pruner, sampler=args.sampler, seed=args.seed,
                          references=args.references, warm_start=args.warm_start, confirm=args.confirm,
                          confirm_rule=args.confirm_rule,
                          space_params=params, model=args.model),
        training=TrainingArgs(budget=args.budget, rungs=args.rungs, reduction_factor=args.reduction_factor,
                              schedule=args.schedule),
        execution=ExecArgs(device=args.device, dtype=args.dtype, compile=args.compile, memory_limit=args.memory_limit,
                           predict=not args.no_predict, trial_timeout=args.trial_timeout, workers=args.workers,
                           gpus=args.gpus, cores=args.cores, heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, max_time=args.max_time),
        store=StoreArgs(study_name=args.study_name, storage=args.storage, results=args.results),
        output=OutputArgs(save_models=not args.no_save_models, progress=not (args.no_progress or args.quiet),
                          quiet=args.quiet, keep_models=args.keep_models, log_to=log_to),
        study_file=getattr(args, "study_file", None),  # set by studyfile.parse_args
    )


def main_card(argv: list[str]) -> int:
    """`python -m tune card`: one HTML page on this device (tune.report.card.command)."""
    from tune.report.card import command as card

    return card.main(argv)


def main_compare(argv: list[str]) -> int:
    """`python -m tune compare`: studies side by side (tune.report.compare.command)."""
    from tune.report.compare import command as compare

    return compare.main(argv)


# The study itself takes no subcommand: its flags follow `python -m tune` directly.
SUBCOMMANDS = {"report": main_report, "max-batch": main_maxbatch, "card": main_card, "compare": main_compare}


def cli() -> None:
    """The `gptcore-tune` console command: main() with one-line errors and exit codes, as `python -m tune`."""
    console(main, PROG)


if __name__ == "__main__":
    cli()
