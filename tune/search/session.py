"""A study opened for tuning: the settings, the checks, the storage, the worker slots, the plan it prints.

Everything here runs in the tuner's parent, which never imports torch: the device is described by a probe child.
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import shutil
import socket
import statistics
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from gptcore.config import PRESETS, from_name
from gptcore.errors import UserError
from gptcore.files import check_room
from gptcore.prepare import corpus_fingerprint, ensure_prepared, read_meta
from tune.core.budget import (
    DEFAULT_BUDGET,
    SCHEDULES,
    Budget,
    RungPlan,
    format_seconds,
    parse_budget,
    schedule_fields,
)
from tune.core.confirm import CONFIRM_RUNS, SETTLED
from tune.core.epochs import EpochEstimate
from tune.core.outcomes import Status
from tune.core.provenance import INVOCATION_PREFIX, command_line, study_file_record, versions
from tune.core.space import Space, load_space, preset_params, uses_legacy_names
from tune.exec import health
from tune.exec.modelprobe import probe_model
from tune.exec.protocol import TrialJob
from tune.exec.runner import TrialRunner
from tune.exec.slots import Slot, as_trials_see_it, plan_slots
from tune.memory.judge import check_memory_limit, limit_for
from tune.search import warmstart
from tune.search.dispatch import fail_orphans, requeue
from tune.search.settings import SearchArgs, TuneSettings
from tune.search.strategy import make_pruner, make_sampler
from tune.store.locks import hold_sqlite, study_lock
from tune.store.names import check_study_name
from tune.store.spec import StorageSpec, resolve_storage
from tune.store.storage import (
    check_fingerprint,
    check_sqlite_file,
    confirm_study_name,
    make_storage,
    open_study,
    reference_study_name,
)

# Other processes keeping more than this many cores busy before the study starts: say so.
BUSY_AT_START_CORES = 0.5
# What a person would otherwise pick, run through the same rungs to the target and never pruned, so the summary
# can say by how much the winner beats them (or that it does not).
REFERENCES = {"cpu": ("course-default", "baby"), "mps": ("course-default", "baby"),
              "cuda": ("course-default", "baby", "gpu")}
METRIC_NAMES = {"loss": "val_loss", "throughput": "tokens_per_s"}  # what Optuna is told, per objective
STEP_BUDGET_TIMEOUT_S = 3600.0  # hard timeout of a trial with a step budget (time unknown in advance)
# Free space a study needs to start: its storage, trial logs and tables take a few MiB. A full disk is then one
# line before the first trial; one that fills up later ends the study in one line too (tune.__main__).
RESULTS_ROOM = 64 * 2**20


@dataclass
class StudyOutcome:
    """What run_study did."""

    study: optuna.Study
    results_dir: Path
    ran: int
    interrupted: bool
    stopped_because: str | None = None  # the error brake: the study stopped short of --trials
    time_up: bool = False  # --max-time passed: no new run was started after it


def full_disk(exc: BaseException | None) -> str | None:
    """What filled up when `exc`, or an exception it was raised from, is a full disk: the file it names (else
    "the disk", or "the study's storage" for SQLite, which says so without an errno); None when it is not one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return str(exc.filename) if exc.filename else "the disk"
        if "database or disk is full" in str(exc):  # SQLITE_FULL, through SQLAlchemy's OperationalError
            return "the study's storage"
        exc = exc.__cause__ or exc.__context__
    return None


def slug(text: str) -> str:
    """Lower-case, alphanumerics and dashes: for study and folder names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def make_results_folder(folder: Path) -> None:
    """Create the study's results folder once it is proven writable with RESULTS_ROOM free, or fail with one line."""
    try:
        check_room(folder, "study's results", RESULTS_ROOM)
        folder.mkdir(parents=True, exist_ok=True)
    except UserError as exc:
        raise UserError(f"--results {exc}") from None
    except OSError as exc:
        raise UserError(f"--results {folder}: not writable ({exc.strerror or exc})") from None


@dataclass
class Session:
    """An opened study and everything its trials need."""

    settings: TuneSettings
    study: optuna.Study
    references: optuna.Study | None
    space: Space
    env: dict[str, Any]
    meta: dict[str, Any]
    data_dir: Path
    results_dir: Path
    dtype: str
    storage: StorageSpec  # its URL is never stored nor printed: it may carry a password (use .display)
    budget: Budget
    plan: RungPlan
    slots: list[Slot]
    presets: tuple[str, ...]  # the reference presets of this study
    lock: Any  # tune.store.locks.study_lock: one decision at a time across every tuner on this study
    hold: Any = None  # the SQLite file's one-tuner hold, kept while the study runs
    confirms: optuna.Study | None = None  # the confirmation runs (--confirm), None when off
    legacy_params: bool = False  # a study started before 0.2 draws its exponents as log2_batch_size (Space.suggest)
    model: dict[str, Any] | None = None  # --model's probe (tune.exec.modelprobe): its class, declared fields...

    @property
    def memory_limit(self) -> int | None:
        """The bytes a trial may hold (tune.memory.judge.limit_for); None: no limit to predict against."""
        return limit_for(self.settings.execution.memory_limit, self.env)

    def close(self) -> None:
        """Let go of the SQLite hold and the lock's file or connection (the process's exit does the same)."""
        if self.hold is not None:
            self.hold.close()
        self.lock.close()

    @property
    def timeout(self) -> float:
        """Hard per-trial timeout: --trial-timeout, else 3 x the time budget + 120 s (1 h for step budgets)."""
        s = self.settings
        if s.execution.trial_timeout:
            return s.execution.trial_timeout
        return 3 * self.budget.seconds + 120 if self.budget.seconds else STEP_BUDGET_TIMEOUT_S

    def train_fields(self) -> dict[str, Any]:
        """TrainConfig fields every trial and reference shares: the target budget, schedule, evaluation, device."""
        t = self.settings.training
        return dict(**self.budget.train_fields(), **schedule_fields(t.schedule), eval_interval=10**9,
                    eval_iters=t.eval_iters, eval_batch_size=t.eval_batch_size, eval_train_split=False,
                    dtype=self.dtype, compile=self.settings.execution.compile, device=self.env["device"],
                    seed=self.settings.search.seed)


def trial_configs(params: dict[str, Any], session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and train config fields for one trial: the six parameters, the extra fields it drew (a user model's
    under the model's `extra`), plus the shared rest."""
    model = dict(vocab_size=session.meta["vocab_size"], block_size=params["block_size"], n_embed=params["n_embed"],
                 n_head=params["n_head"], n_layer=params["n_layer"], dropout=0.0)
    if session.settings.search.model:  # the user's class (references too: the same class at a preset's shape)
        model["model"] = session.settings.search.model
    train = dict(session.train_fields(), batch_size=params["batch_size"], learning_rate=params["learning_rate"])
    session.space.place(params, model, train)  # a reference (the six only) trains what an unsearched field gets
    return model, train


def reference_configs(preset: str, session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
    """A preset's six searched values, trained exactly as every trial is: the study's schedule, warm-up, dropout 0,
    evaluation, budget, precision and seed. Only what the search varies differs, so "the winner beats baby by 8 %"
    compares configurations, not schedules (a preset's own constant rate or dropout would be a handicap). A field
    searched beside the six is not the preset's either: a reference trains what a trial would without the search
    (dropout 0, else the config's default), the same whatever the space, and the tables show that value."""
    return trial_configs(preset_params(preset), session)


def resolve_references(settings: TuneSettings, device_type: str) -> tuple[str, ...]:
    """The presets to run after the search; unknown names are a user error."""
    names = REFERENCES.get(device_type, ()) if settings.search.references is None else settings.search.references
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise UserError(f"--references: unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    return tuple(names)


def check_compile(settings: TuneSettings, env: dict[str, Any]) -> None:
    """--compile graphs needs CUDA: refused before any trial runs rather than as an error in every trial."""
    if settings.execution.compile == "graphs" and env["device_type"] != "cuda":
        raise UserError(f"--compile graphs needs a CUDA device (CUDA graphs), not {env['device_type']}; "
                        f"use default, none or auto")


def resolve_dtype(settings: TuneSettings, env: dict[str, Any]) -> str:
    """auto -> bfloat16 on a GPU that has it, else float32; float16 needs a GPU."""
    dtype = settings.execution.dtype
    if dtype == "auto":
        dtype = "bfloat16" if env["device_type"] == "cuda" and env["bf16_supported"] else "float32"
    if dtype == "float16" and env["device_type"] == "cpu":
        raise UserError("--dtype float16 needs a GPU; on the CPU use bfloat16 or float32")
    return dtype


def warn_if_busy(say: Any, cores: list[int]) -> float | None:
    """Before the first trial: are other processes already using the cores the trials will run on? Returns the
    cores they kept busy."""
    # Only the trials' cores: a neighbour pinned to another core (a second tuner given --cores 1) slows nothing.
    busy = health.busy_now(1.0, sorted(set(cores)) or None)
    if busy is not None and busy > BUSY_AT_START_CORES:
        say(f"warning: the machine is busy before the study starts: other processes keep {busy:.1f} of the "
            f"{len(set(cores))} core(s) the trials run on busy. Trials will run slower (and learn less in a time "
            f"budget); each one is checked and flagged as contended in trials.csv and summary.md.")
    return busy


@dataclass(frozen=True)
class Survey:
    """What the flags come to before anything of the study is created: the corpus, the device, the choices, the
    study's name and folder, the worker slots (open_session goes on to open the study; --dry-run stops here)."""

    data_dir: Path
    meta: dict[str, Any]
    env: dict[str, Any]
    choice: Choice
    name: str
    results_dir: Path
    slots: list[Slot]
    model: dict[str, Any] | None = None  # --model's probe (tune.exec.modelprobe): its class, declared fields...


def survey(settings: TuneSettings, runner: TrialRunner) -> Survey:
    """Check every flag against the corpus and the probed device (one line each), creating nothing of the study."""
    check_flags(settings)
    # The class is checked first: a class that cannot train is one line before anything is created.
    model = probe_model(settings.search.model) if settings.search.model else None
    data_dir = ensure_prepared(settings.search.data, progress=settings.output.progress)
    meta = read_meta(data_dir)
    env = runner.probe(settings.execution.device)
    choice = choose(settings, env, meta, model["fields"] if model else None)
    name = (check_study_name(settings.store.study_name) if settings.store.study_name is not None
            else f"{slug(env['device_name'])}-{slug(Path(settings.search.data).stem)}")
    ex = settings.execution
    slots = plan_slots(ex.workers, env, ex.gpus, ex.cores)
    env = as_trials_see_it(env, slots)  # what summary.md and the card say of the threads per trial
    return Survey(data_dir, meta, env, choice, name, settings.store.results / name, slots, model)


def open_session(settings: TuneSettings, runner: TrialRunner) -> Session:
    """Check everything the user asked for, open (or resume) the study, record its fingerprint."""
    surveyed = survey(settings, runner)
    data_dir, meta, env, choice = surveyed.data_dir, surveyed.meta, surveyed.env, surveyed.choice
    name, results_dir, slots, model = surveyed.name, surveyed.results_dir, surveyed.slots, surveyed.model
    spec = resolve_storage(settings.store.storage, results_dir / "study.db")
    # read and checked before anything is created
    warm = warmstart.prepare(settings, choice.space, spec, name, results_dir)
    fingerprint = study_fingerprint(settings, env, meta, choice, slots)
    opened = open_studies(settings, choice, spec, name, results_dir, fingerprint, warm)
    (results_dir / "logs").mkdir(exist_ok=True)
    n_trials = fail_orphans_of(opened)
    reseed(opened.study, settings, spec, n_trials)
    record(opened, settings, env, meta, choice)
    if model is not None:
        opened.study.set_user_attr("model", model)
    legacy = uses_legacy_names([t.params for t in opened.study.get_trials(deepcopy=False)])
    return Session(settings, opened.study, opened.refs, choice.space, env, meta, data_dir, results_dir,
                   choice.dtype, spec, choice.budget, choice.plan, slots, choice.references, opened.lock,
                   opened.hold, opened.confirms, legacy, model)


def check_flags(settings: TuneSettings) -> None:
    """The flags that need nothing opened to check: one line each."""
    s = settings.search
    if s.trials < 1:
        raise UserError(f"--trials must be at least 1, got {s.trials}")
    if s.confirm < 0:
        raise UserError(f"--confirm must be 0 (off) or more, got {s.confirm}")
    keep = settings.output.keep_models
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise UserError(f"--keep-models must be an integer >= 0 (0: only best-model/), got {keep!r}")
    if settings.training.schedule not in SCHEDULES:
        raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {settings.training.schedule!r}")
    make_sampler(s.sampler, s.seed)  # an unknown name or a missing package, before anything is created


@dataclass(frozen=True)
class Choice:
    """What the flags come to on this device and corpus: precision, target, rungs, references, space."""

    dtype: str
    budget: Budget
    plan: RungPlan
    references: tuple[str, ...]
    space: Space


def choose(settings: TuneSettings, env: dict[str, Any], meta: dict[str, Any],
           model_fields: dict[str, Any] | None = None) -> Choice:
    """The flags resolved against the probed device and the corpus, each checked (one line); `model_fields`: the
    fields --model's class declares, searchable with --param."""
    dtype = resolve_dtype(settings, env)
    check_compile(settings, env)
    check_memory_limit(settings.execution.memory_limit, env)
    t = settings.training
    budget = t.budget or parse_budget(DEFAULT_BUDGET.get(env["device_type"], DEFAULT_BUDGET["cpu"]))
    plan = RungPlan.for_budget(budget, t.reduction_factor, t.rungs)
    references = resolve_references(settings, env["device_type"])
    s = settings.search
    space = load_space(s.space, env["device_type"], env.get("gpu_memory_bytes"), s.space_overrides, s.space_params,
                       model_fields)
    biggest = max([space.block_size[1], *(from_name(p)[0].block_size for p in references)])
    shortest = min(meta["train_tokens"], meta["val_tokens"])
    if biggest + 2 > shortest:
        raise UserError(f"search space: block_size up to {biggest} needs more than the corpus's "
                        f"{shortest} tokens in its smaller split")
    return Choice(dtype, budget, plan, references, space)


def study_fingerprint(settings: TuneSettings, env: dict[str, Any], meta: dict[str, Any], choice: Choice,
                      slots: list[Slot]) -> dict[str, Any]:
    """What a resumed study must match: the device, corpus, precision, target, objective, space, schedule."""
    fingerprint = {**env, "corpus": corpus_fingerprint(meta), "dtype": choice.dtype, "budget": str(choice.budget),
                   "objective": settings.search.objective, "space": choice.space.to_dict(),
                   "schedule": settings.training.schedule,
                   # what fits (run, OOM, skipped as predicted OOM) is judged against it
                   "memory_limit": settings.execution.memory_limit}
    # A chosen mode changes how much a time budget trains (a study from before it was recorded resumes as it was).
    fingerprint["compile"] = settings.execution.compile
    fingerprint["model"] = settings.search.model  # another class is another question ("": gptcore's GPT)
    if env["device_type"] == "cpu":  # a time budget on fewer cores trains fewer tokens: another question
        fingerprint["threads_per_trial"] = len(slots[0].cores)
    return fingerprint


@dataclass
class Opened:
    """The study and its companions in their storage, with the lock and the SQLite hold."""

    study: optuna.Study
    refs: optuna.Study | None
    confirms: optuna.Study | None
    lock: Any
    hold: Any


def open_studies(settings: TuneSettings, choice: Choice, spec: StorageSpec, name: str, results_dir: Path,
                 fingerprint: dict[str, Any], warm: warmstart.WarmStart | None) -> Opened:
    """Create the results folder, open the storage and the studies, check the fingerprint, enqueue a warm start.

    Any failure lets go of the SQLite hold and removes the folders this run created: nothing is left behind."""
    created = highest_missing(results_dir)
    hold = None
    try:
        make_results_folder(results_dir)
        check_sqlite_file(spec, results_dir)
        hold = hold_sqlite(spec)  # SQLite is for one tuner process: a second one is told so, in one line
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = make_storage(spec, settings.execution.heartbeat_interval, settings.execution.grace_period,
                               on_stale=requeue)
        direction = "minimize" if settings.search.objective == "loss" else "maximize"
        study = open_study(name, storage, direction, make_sampler(settings.search.sampler, settings.search.seed),
                           make_pruner(settings.search.pruner, choice.plan), display=spec.display)
        check_fingerprint(study, fingerprint)
        refs = companion(reference_study_name(name), storage, direction, spec) if choice.references else None
        # never pruned, and kept from the sampler: they say nothing new about the space
        confirms = companion(confirm_study_name(name), storage, direction, spec) if settings.search.confirm else None
        lock = study_lock(spec, name)
        warmstart.enqueue(study, warm, lock)  # once per study, under the lock: its first trials
    except BaseException:
        if hold is not None:
            hold.close()
        if created is not None:  # a storage that would not open leaves no empty results folder behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    return Opened(study, refs, confirms, lock, hold)


def highest_missing(folder: Path) -> Path | None:
    """The highest folder that creating `folder` would create (None: it exists already)."""
    created = folder
    while not created.parent.exists() and created.parent != created:
        created = created.parent
    return None if created.exists() else created


def companion(name: str, storage: Any, direction: str, spec: StorageSpec) -> optuna.Study:
    """A study of references or confirmation runs: random order, never pruned."""
    return open_study(name, storage, direction, optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(),
                      display=spec.display)


def fail_orphans_of(opened: Opened) -> int:
    """Under the lock: a tuner holding the SQLite file alone fails whatever is RUNNING (orphaned by a dead tuner).
    Returns the trials the study holds."""
    with opened.lock:
        if opened.hold is not None:
            for s in (opened.study, opened.refs, opened.confirms):
                if s is not None:
                    fail_orphans(s)
        return len(opened.study.get_trials(deepcopy=False))


def reseed(study: optuna.Study, settings: TuneSettings, spec: StorageSpec, n_trials: int) -> None:
    """Re-seed with the number of trials already run, so a resumed study does not replay its first draws."""
    # Tuners sharing a study (journal, PostgreSQL) may start at the same count: each also draws a seed of its own.
    s = settings.search
    seed = s.seed + n_trials if spec.kind == "sqlite" else random.SystemRandom().randrange(2**32)
    study.sampler = make_sampler(s.sampler, seed % 2**32)


def record(opened: Opened, settings: TuneSettings, env: dict[str, Any], meta: dict[str, Any],
           choice: Choice) -> None:
    """The study's user attributes: environment, corpus, metric names, this invocation, the settings."""
    study = opened.study
    study.set_user_attr("environment", env)
    study.set_user_attr("vocab_size", meta["vocab_size"])
    # The dashboard names the objective (optuna-dashboard shows "Objective 0" without).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2 in all but name
        for s in (study, opened.refs, opened.confirms):
            if s is not None:
                s.set_metric_names([METRIC_NAMES[settings.search.objective]])
    # The corpus's size: the report says how many epochs of it each trial saw.
    study.set_user_attr("corpus_tokens", {"train": meta["train_tokens"], "val": meta["val_tokens"]})
    # Every invocation, under a key of its own (several tuners may start at once: no read-modify-write).
    started = datetime.now(timezone.utc)
    study.set_user_attr(f"{INVOCATION_PREFIX}{started:%Y%m%dT%H%M%S.%fZ}-{socket.gethostname()}-{os.getpid()}", {
        "command": command_line(), "started": started.isoformat(timespec="seconds"), "host": socket.gethostname(),
        "versions": versions(), **study_file_record(settings.study_file)})
    study.set_user_attr("settings", stored_settings(settings, choice))


def stored_settings(settings: TuneSettings, choice: Choice) -> dict[str, Any]:
    """The settings a study records, flat: what the report, compare, card and warm start read back."""
    s, t, ex = settings.search, settings.training, settings.execution
    budget, plan = choice.budget, choice.plan
    return {
        "budget": str(budget), "budget_amount": budget.amount, "budget_unit": budget.unit,
        "rungs": list(plan.fractions), "reduction_factor": plan.eta, "schedule": t.schedule,
        "objective": s.objective, "dtype": choice.dtype, "compile": ex.compile, "pruner": s.pruner,
        "references": list(choice.references),
        "memory_limit_bytes": ex.memory_limit, "predict": ex.predict, "space": choice.space.to_dict(),
        "eval_iters": t.eval_iters, "eval_batch_size": t.eval_batch_size, "corpus": str(s.data), "seed": s.seed,
        "sampler": s.sampler, "trials": s.trials, "confirm": s.confirm, "confirm_runs": CONFIRM_RUNS,
        "confirm_rule": s.confirm_rule,
        "save_models": settings.output.save_models, "keep_models": settings.output.keep_models,
        "model": s.model,
    }


def _pruning(session: Session) -> bool:
    """Whether the study prunes at its rungs (successive halving on the loss)."""
    s = session.settings.search
    return s.pruner in ("asha", "predict", "hyperband") and s.objective == "loss"


def target_budgets(session: Session, remaining: int, references: list[str], confirms: int = 0) -> float:
    """Target budgets the study expects to train (successive halving's floor when it prunes)."""
    budgets = session.plan.cost(remaining) if _pruning(session) else float(remaining)
    return budgets + len(references) + confirms


def plan_message(session: Session, remaining: int, references: list[str], confirms: int = 0,
                 epochs: EpochEstimate | str | None = None) -> str:
    """What the study will cost, from the rung plan, before it starts (`confirms`: confirmation runs to come;
    `epochs`: the epochs of the corpus per trial, tune.search.session.epoch_estimate)."""
    s, plan, budget = session.settings, session.plan, session.budget
    pruning = _pruning(session)
    budgets = plan.cost(remaining) if pruning else float(remaining)
    reach = plan.reach(remaining)[-1] if pruning else float(remaining)
    default = (f" (the default on a {session.env['device_type'].upper()}; pass --budget for the training you will "
               f"really run, e.g. --budget 1h)")
    lines = [f"target: {budget} of training per configuration" + ("" if s.training.budget else default),
             f"rungs: {plan.describe(budget)} (reduction factor {plan.eta}, pruner {s.search.pruner}, "
             f"schedule {s.training.schedule} to the target)"]
    if epochs is not None:
        lines.append(epochs if isinstance(epochs, str) else epochs.line())
    total = target_budgets(session, remaining, references, confirms)
    # Successive halving's cost is a floor; the prediction also stops trials halving would promote: an estimate.
    floor = ("about " if s.search.pruner == "predict" else "at least ") if pruning else ""
    sequential = s.search.confirm_rule == "sequential"
    cost = f"expected training: {floor}{total:.1f} target budgets ({budgets:.1f} for {remaining} trials"
    cost += f" + {len(references)} for the references {', '.join(references)}" if references else ""
    cost += f" + {'up to ' if sequential else ''}{confirms} for confirmation runs)" if confirms else ")"
    if budget.seconds:
        # Evaluation and the warm-up steps add roughly 15 % of the training (measured on a CPU); every run also
        # pays its process start, torch import and memory trace once (run_overhead_seconds).
        runs = remaining + len(references) + confirms
        wall = (total * budget.seconds * 1.15 + runs * run_overhead_seconds(session)) / len(session.slots)
        cost += f", {floor}{format_seconds(wall)} wall-clock"
        if len(session.slots) > 1:
            cost += f" on {len(session.slots)} workers"
    lines.append(cost)
    if pruning:
        # Successive halving's floor assumes trials arrive in random order. A sampler that keeps finding better
        # configurations has more of them promoted (each new best of a rung trains on): measured on a 2-core CPU,
        # a 30-trial 2-minute study trained 12 trials to the target and took 2.5x this floor.
        lines.append("(successive halving's floor; a sampler that keeps finding better configurations has more of "
                     "them promoted, up to about 3x this" + ("; the prediction stops some of those)"
                                                             if s.search.pruner == "predict" else ")"))
    lines.append(f"{floor}{reach:.0f} of the {remaining} trials will train to the full target"
                 if pruning else f"every trial trains to the full target (pruner {s.search.pruner})")
    if references:
        lines.append("references: after the search" + (", each stopped at a rung where it is predicted to lose to "
                                                        "the answer" if s.search.pruner == "predict" else ""))
    if confirms:
        lines.append(confirm_message(s.search, confirms))
    lines.append(workers_message(session))
    return "\n".join(lines)


def confirm_message(search: SearchArgs, confirms: int) -> str:
    """The plan's line on confirmation: which runs, with which seeds, and when they stop."""
    seeds = f"seeds {search.seed + 1}..{search.seed + CONFIRM_RUNS}"
    if search.confirm_rule == "sequential":
        return (f"confirmation: once the study is done, its best configuration trains once more to the target "
                f"(seed {search.seed + 1}); its best {search.confirm} train more ({seeds}, up to {CONFIRM_RUNS} runs "
                f"each) only while the runner-up may still be better by more than {SETTLED} on average (the noise "
                f"measured so far); the winner is the best mean (up "
                f"to {confirms} runs; --confirm 0: none; --confirm-rule all: every one)")
    return (f"confirmation: once the study is done, its best {search.confirm} configurations (trials or references) "
            f"train {CONFIRM_RUNS} more times each to the target, with {seeds}; the winner is the best mean "
            f"({confirms} runs to come; --confirm 0: none)")


# Epochs per trial with a time budget need a throughput: a trial process trains the study's first configuration
# for PROBE_SECONDS of timed steps (the same code, device, precision and cores as the trials). It is run only when
# its cost (at most RUN_OVERHEAD_S + PROBE_SECONDS) is at most PROBE_SHARE of the training the study expects: a
# probe never costs a short study (or a test) noticeably, and a long one learns before spending hours.
PROBE_SECONDS = 3.0
PROBE_SHARE = 0.05


def epoch_estimate(session: Session, runner: TrialRunner, references: list[str],
                   expected_seconds: float) -> EpochEstimate | str:
    """Epochs of the corpus the study's first configuration sees at the target: exact for a step budget; for a
    time budget from the study's own runs, else a throughput probe; a sentence when there is no estimate."""
    budget, train_tokens = session.budget, session.meta["train_tokens"]
    what, model, train = first_configuration(session, references)
    if budget.steps:
        space = session.space
        span = (space.batch_size[0] * space.block_size[0], space.batch_size[1] * space.block_size[1])
        return EpochEstimate.of_steps(budget, train["batch_size"] * train.get("grad_accum_steps", 1),
                                      model["block_size"], train_tokens, what, span)
    measured = [a["tokens_per_s"] for a in (t.user_attrs for t in session.study.get_trials(deepcopy=False))
                if a.get("status") == "ok" and a.get("tokens_per_s")]
    if measured:
        return EpochEstimate.of_seconds(budget, statistics.median(measured), train_tokens,
                                        f"the median of the {len(measured)} trial(s) this study ran to the target",
                                        "at their measured tokens/s")
    cost = RUN_OVERHEAD_S + PROBE_SECONDS
    if cost > PROBE_SHARE * expected_seconds:
        return (f"epochs of the corpus per trial at the target: not estimated (a throughput probe, about "
                f"{cost:.0f} s, would cost more than {PROBE_SHARE:.0%} of this study's training; summary.md gives "
                f"the epochs each trial saw)")
    tokens_per_s, how = probe_throughput(session, runner, model, train)
    if tokens_per_s is None:
        return f"epochs of the corpus per trial at the target: not estimated ({how})"
    return EpochEstimate.of_seconds(budget, tokens_per_s, train_tokens, what, how)


def first_configuration(session: Session, references: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The configuration the study trains first (its first pending reference, else the middle of its search
    space): a name for it, its model and train fields."""
    if references:
        model, train = reference_configs(references[0], session)
        name = f"ref {references[0]}"
    else:
        model, train = trial_configs(middle(session.space), session)
        name = "the middle of the search space"
    return f"{name}: batch {train['batch_size']} x block {model['block_size']}", model, train


def middle(space: Space) -> dict[str, Any]:
    """The search space's middle configuration: geometric middles, powers of two kept, n_embed a multiple of 64."""
    def geo(pair: tuple[float, float]) -> float:
        return math.sqrt(pair[0] * pair[1])

    values = {name: 2 ** round(math.log2(geo(getattr(space, name)))) for name in ("batch_size", "block_size",
                                                                                  "n_head")}
    return {**values, "n_embed": max(64, round(geo(space.n_embed) / 64) * 64), "n_layer": round(geo(space.n_layer)),
            "learning_rate": geo(space.learning_rate)}


def probe_throughput(session: Session, runner: TrialRunner, model: dict[str, Any],
                     train: dict[str, Any]) -> tuple[float | None, str]:
    """Train `model` for PROBE_SECONDS in a trial process on the first worker's slot: (tokens/s, how it was got),
    or (None, why not). The parent stays torch-free; the probe's log is logs/plan_probe.log."""
    slot = session.slots[0]
    job = TrialJob(model=model, train={**train, "max_seconds": PROBE_SECONDS, "max_iters": None},
                   data=str(session.data_dir), device=session.env["device"],
                   memory_limit=session.settings.execution.memory_limit,
                   log=str(session.results_dir / "logs" / "plan_probe.log"), eval_at=[], cores=list(slot.cores),
                   gpu=slot.gpu, compile_cache=str(session.results_dir / "compile-cache"))
    run = runner.run(job, lambda *_: False, PROBE_SECONDS + 120 + RUN_OVERHEAD_S)
    if run.status == Status.INTERRUPTED:  # Ctrl-C during the probe stops the tuner, as during a trial
        raise KeyboardInterrupt
    rate = (run.result or {}).get("tokens_per_s")
    if run.status != Status.OK or not rate:
        return None, f"the throughput probe ended {run.status.value}: {run.message or 'no tokens/s'}"
    mode = (run.result or {}).get("compile", "none")
    return rate, (f"{rate:,.0f} tokens/s from a {PROBE_SECONDS:.0f} s throughput probe of it, compile {mode}"
                  + ("; a trial that compiles runs faster and sees more" if mode == "none" else ""))


# A run's fixed cost before its first step, as a bound for timeouts: the trial process's start, torch's import and
# the memory trace took a median 7.8 s per run in a 6-trial study of tiny models on this 2-core CPU (before trials
# forked from a forkserver with torch loaded).
RUN_OVERHEAD_S = 8.0
# The same cost as the plan's estimate when the study has no evidence yet. CPU: a trial forks with torch loaded
# (0.02 s to Ready) and traces its step only against a limit, ~1 s: 1.0 s, the median with the trace in three
# real 20-trial studies (2026-12-06, 12 s target); without a limit it is less, and the study's own runs say so
# once it has some. CUDA adds the device's context: RUN_OVERHEAD_S, not re-measured on a GPU.
FIRST_RUN_OVERHEAD_S = {"cpu": 1.0}


def run_overhead_seconds(session: Session) -> float:
    """Seconds each run spends before its first step: the median of this study's runs, else the device's
    FIRST_RUN_OVERHEAD_S (RUN_OVERHEAD_S on a GPU)."""
    spent = [a["startup_seconds"] + (a.get("mem_predict_seconds") or 0)  # process start to Ready, then the trace
             for a in (t.user_attrs for t in session.study.get_trials(deepcopy=False)) if a.get("startup_seconds")]
    if spent:
        return statistics.median(spent)
    return FIRST_RUN_OVERHEAD_S.get(session.env["device_type"], RUN_OVERHEAD_S)


def workers_message(session: Session) -> str:
    """Which share of the machine each worker owns, and what that means for a time budget on a CPU."""
    slots = session.slots
    line = f"workers: {len(slots)} ({'; '.join(s.describe() for s in slots)})"
    if session.env["device_type"] == "cpu" and session.budget.seconds:
        threads = len(slots[0].cores)
        # A time budget on k cores trains about k/n of the tokens the whole machine would: the winner is the
        # best configuration for a run on k cores, which may not be the best on all of them.
        line += (f"\n    each trial trains on {threads} core(s) for {session.budget}: the winner is the best "
                 f"configuration for a run on {threads} core(s)")
        if len(slots) > 1:
            line += "; for the whole machine's answer use --workers 1, or a step budget (e.g. --budget 2000steps)"
    return line


