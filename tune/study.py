"""The study: ask Optuna for a configuration, run it in its own process, tell Optuna how it went."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from gptcore.errors import UserError
from gptcore.prepare import corpus_fingerprint, ensure_prepared
from tune import health
from tune.runner import TrialRun, TrialRunner
from tune.space import Space, load_space

STATE_OF = {
    "ok": TrialState.COMPLETE,
    # Pruned, OOM, diverged and timed-out trials are all told as PRUNED. TPE ranks a pruned trial by its
    # last report, and one with no report (an OOM before the first evaluation) below every other: the
    # sampler learns to avoid the region. FAIL would hide the trial from the sampler, which would keep
    # proposing configurations that do not fit.
    "pruned": TrialState.PRUNED,
    "oom": TrialState.PRUNED,
    "diverged": TrialState.PRUNED,
    "timeout": TrialState.PRUNED,
    # An unexplained error says nothing about the configuration: keep it out of the sampler's model.
    "error": TrialState.FAIL,
    "interrupted": TrialState.FAIL,
}
FINGERPRINT_KEYS = ("device_name", "gpu_memory_bytes", "cuda", "cuda_driver", "torch", "corpus", "dtype",
                    "budget", "objective", "space")
# Other processes keeping more than this many cores busy before the study starts: say so.
BUSY_AT_START_CORES = 0.5


@dataclass(frozen=True)
class TuneSettings:
    """Everything `python -m tune` was asked to do."""

    trials: int = 50
    trial_seconds: float | None = 30.0
    trial_steps: int | None = None
    data: Path = Path("data/wizard_of_oz.txt")
    device: str = "auto"
    study_name: str | None = None
    storage: str | None = None
    results: Path = Path("results")
    space: str = "auto"
    space_overrides: dict[str, Any] = field(default_factory=dict)
    objective: str = "loss"
    memory_limit: int | None = None
    pruner: str = "median"
    sampler: str = "tpe"  # "random": the baseline TPE is measured against
    seed: int = 0
    dtype: str = "auto"
    trial_timeout: float | None = None
    # Validation: the same 4 x 32 windows for every trial and every evaluation, val split only (the train
    # loss is the mean training loss): evaluation stays a few percent of a trial.
    eval_iters: int = 4
    eval_batch_size: int = 32
    reports: int = 4  # evaluations per trial (the last at the end of the budget)
    progress: bool = True

    @property
    def budget(self) -> str:
        """The per-trial budget in words (also part of the study's fingerprint)."""
        return f"{self.trial_steps} steps" if self.trial_steps else f"{self.trial_seconds:g} s"


@dataclass
class StudyOutcome:
    """What run_study did."""

    study: optuna.Study
    results_dir: Path
    ran: int
    interrupted: bool


def slug(text: str) -> str:
    """Lower-case, alphanumerics and dashes: for study and folder names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def check_writable(folder: Path) -> None:
    """Create `folder` and prove it is writable, or fail with one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"--results {folder}: not writable ({exc.strerror or exc})") from None


def open_study(name: str, storage: str, direction: str, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create or load the study; any failure to reach the storage is a one-line user error."""
    try:
        return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)
    except ValueError as exc:
        if "direction" in str(exc):
            raise UserError(f"study {name!r} exists with another objective direction: {exc}") from None
        raise UserError(f"--storage {storage}: cannot open ({exc})") from None
    except Exception as exc:  # sqlalchemy, a missing DB driver, a bad URL: all mean "this storage won't do"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--storage {storage}: cannot open ({type(exc).__name__}: {first[:200]})") from None


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """tpe (default) or random."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--sampler must be tpe or random, got {name!r}")


def make_pruner(name: str, reports: int) -> optuna.pruners.BasePruner:
    """median (default), hyperband or none."""
    if name == "median":
        # Never prune on the first report (a quarter of the budget) nor before 5 trials have finished. Reports are
        # numbered from 1 and Optuna prunes from step == n_warmup_steps on, so 2 is the first step it may prune.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=reports)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner must be median, hyperband or none, got {name!r}")


def trial_configs(params: dict[str, Any], settings: TuneSettings, vocab_size: int, dtype: str,
                  device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and train config fields for one trial: the six parameters plus the fixed rest."""
    model = dict(vocab_size=vocab_size, block_size=params["block_size"], n_embed=params["n_embed"],
                 n_head=params["n_head"], n_layer=params["n_layer"], dropout=0.0)
    steps = settings.trial_steps
    train = dict(batch_size=params["batch_size"], learning_rate=params["learning_rate"],
                 max_iters=steps, max_seconds=None if steps else settings.trial_seconds,
                 eval_interval=max(1, steps // settings.reports) if steps else 10**9,
                 eval_iters=settings.eval_iters, eval_batch_size=settings.eval_batch_size, eval_train_split=False,
                 dtype=dtype, device=device, seed=settings.seed)
    return model, train


def fingerprint(env: dict[str, Any], corpus: str, dtype: str, settings: TuneSettings,
                space: Space) -> dict[str, Any]:
    """What must not change between runs of one study."""
    values = {**env, "corpus": corpus, "dtype": dtype, "budget": settings.budget, "objective": settings.objective,
              "space": space.to_dict()}
    return {k: values.get(k) for k in FINGERPRINT_KEYS}


def check_fingerprint(study: optuna.Study, fp: dict[str, Any]) -> None:
    """Refuse to mix trials from another device, corpus, precision, budget or objective."""
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fp)
        return
    # A key missing from an old fingerprint was not recorded by the version that started the study: not a change.
    diff = [f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in FINGERPRINT_KEYS if old.get(k, fp.get(k)) != fp.get(k)]
    if diff:
        raise UserError(f"study {study.study_name!r} was run with other settings ({'; '.join(diff)}); "
                        f"use another --study-name")


def close_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a run that was killed outright: record them, never lose them."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.Trial(study, frozen._trial_id)  # FrozenTrial exposes its storage id only this way
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("error", "the tuner process stopped during this trial")
        study.tell(trial, state=TrialState.FAIL)


def current_rss_bytes() -> int | None:
    """This (parent) process's resident memory now, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def record(trial: optuna.Trial, run: TrialRun, params: dict[str, Any], env: dict[str, Any]) -> None:
    """Every per-trial figure as a user attribute (the results table is built from these)."""
    attrs: dict[str, Any] = {"status": run.status, **params, "device": env["device_name"],
                             "parent_rss_bytes": current_rss_bytes(),
                             "trial_seconds": run.trial_seconds, "startup_seconds": run.startup_seconds,
                             "error": run.message, "oom_phase": run.phase if run.status == "oom" else None,
                             "oom_requested_bytes": run.requested_bytes}
    m = run.measure
    attrs.update(cpu_share=m.get("cpu_share"), others_cores=m.get("others_cores"), load_1m=m.get("load_1m"),
                 threads=m.get("threads"), gpu_other_processes=m.get("gpu_other_processes"),
                 gpu_util_percent=m.get("gpu_util_percent"), contended=health.contention(m, env["device_type"]))
    r = run.result
    warnings: list[str] = []
    if r is not None:
        mem = r["peak_memory"]
        timed_steps = r["steps"] - r["warmup_steps"]
        busy = r["train_seconds"] + r["warmup_seconds"] + r["eval_seconds"]
        eval_share = r["eval_seconds"] / busy if busy > 0 else None
        attrs.update(val_loss=r["val_loss"], train_loss=r["train_loss"], steps=r["steps"], tokens=r["tokens"],
                     tokens_per_s=r["tokens_per_s"], train_seconds=r["train_seconds"],
                     eval_seconds=r["eval_seconds"], warmup_steps=r["warmup_steps"],
                     warmup_seconds=r["warmup_seconds"], eval_share=eval_share,
                     peak_allocated_bytes=mem.get("peak_allocated_bytes"),
                     peak_reserved_bytes=mem.get("peak_reserved_bytes"), peak_rss_bytes=mem.get("peak_rss_bytes"),
                     n_params=r["n_params"], mfu=r["mfu"])
        # A pruned trial stopped early on purpose: its step count says nothing about the budget.
        warnings = health.budget_warnings(timed_steps if run.status == "ok" else None, eval_share)
    elif run.evals:  # failed after some evaluations: keep the last losses seen
        _, step, train_loss, val_loss = run.evals[-1]
        attrs.update(val_loss=val_loss, train_loss=train_loss, steps=step)
    attrs["budget_warning"] = "; ".join(warnings) or None
    for key, value in attrs.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON storage has no NaN
        trial.set_user_attr(key, value)


def describe_run(number: int, run: TrialRun, params: dict[str, Any], attrs: dict[str, Any]) -> str:
    """One line per finished trial, and a warning line when its figures are not to be trusted."""
    p = params
    cfg = (f"batch {p['batch_size']} block {p['block_size']} embed {p['n_embed']} heads {p['n_head']} "
           f"layers {p['n_layer']} lr {p['learning_rate']:.2e}")
    r = run.result
    if r is not None:
        mem = r["peak_memory"].get("peak_allocated_bytes") or r["peak_memory"]["peak_rss_bytes"]
        figures = (f"val {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} tok/s | {mem / 2**20:,.0f} MiB | "
                   f"{r['steps']} steps")
    else:
        figures = run.message or ""
    line = f"trial {number:3d} {run.status:<8} {figures} | {cfg} | {run.trial_seconds:.1f} s"
    notes = [f"contended: {attrs['contended']}" if attrs.get("contended") else None, attrs.get("budget_warning")]
    return line + "".join(f"\n    warning: {n}" for n in notes if n)


@dataclass
class Session:
    """An opened study and everything its trials need."""

    settings: TuneSettings
    study: optuna.Study
    space: Space
    env: dict[str, Any]
    meta: dict[str, Any]
    data_dir: Path
    results_dir: Path
    dtype: str
    storage: str  # not stored in the study: a database URL may carry a password

    @property
    def timeout(self) -> float:
        """Hard per-trial timeout: --trial-timeout, else 3 x the time budget + 60 s (600 s for step budgets)."""
        s = self.settings
        return s.trial_timeout or (3 * s.trial_seconds + 60 if not s.trial_steps else 600.0)


def resolve_dtype(settings: TuneSettings, env: dict[str, Any]) -> str:
    """auto -> bfloat16 on a GPU that has it, else float32; float16 needs a GPU."""
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if env["device_type"] == "cuda" and env["bf16_supported"] else "float32"
    if dtype == "float16" and env["device_type"] == "cpu":
        raise UserError("--dtype float16 needs a GPU; on the CPU use bfloat16 or float32")
    return dtype


def check_memory_limit(limit: int | None, env: dict[str, Any]) -> None:
    """A limit must leave room for training (CPU) and fit the card (CUDA)."""
    if limit is None:
        return
    if env["device_type"] == "cpu" and limit <= env["vm_data_bytes"] + 64 * 2**20:
        raise UserError(f"--memory-limit {limit / 2**20:.0f} MiB is below what a trial process needs before "
                        f"training ({env['vm_data_bytes'] / 2**20:.0f} MiB + 64 MiB)")
    if env["device_type"] == "cuda" and limit > env["gpu_memory_bytes"]:
        raise UserError(f"--memory-limit is above the GPU's {env['gpu_memory_bytes'] / 2**30:.1f} GiB")


def check_sqlite_file(storage: str, results_dir: Path) -> None:
    """Refuse a SQLite storage file that is not a database, or an empty one beside results it would overwrite."""
    if not storage.startswith("sqlite:///"):
        return
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        # SQLite leaves a 0-byte file when killed before its first write; fine for a new study, but never
        # beside the tables of one that existed: starting afresh would overwrite its trials.csv.
        if (results_dir / "trials.csv").exists():
            raise UserError(f"{path}: empty, but {results_dir / 'trials.csv'} holds an earlier study's results; "
                            f"restore the database or use another --study-name or --results")
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise UserError(f"{path}: not a SQLite database (a damaged or foreign file); move it away or use "
                        f"another --study-name or --results")


def warn_if_busy(say: Any) -> float | None:
    """Before the first trial: are other processes already using the machine? Returns the cores they kept busy."""
    cores = health.busy_now(1.0)
    if cores is not None and cores > BUSY_AT_START_CORES:
        say(f"warning: the machine is busy before the study starts: other processes keep {cores:.1f} of "
            f"{health.usable_cores()} cores busy. Trials will run slower (and learn less in a time budget); "
            f"each one is checked and flagged as contended in trials.csv and summary.md.")
    return cores


def open_session(settings: TuneSettings, runner: TrialRunner) -> Session:
    """Check everything the user asked for, open (or resume) the study, record its fingerprint."""
    if settings.trials < 1:
        raise UserError(f"--trials must be at least 1, got {settings.trials}")
    data_dir = ensure_prepared(settings.data, progress=settings.progress)
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    env = runner.probe(settings.device)
    dtype = resolve_dtype(settings, env)
    check_memory_limit(settings.memory_limit, env)
    space = load_space(settings.space, env["device_type"], env.get("gpu_memory_bytes"), settings.space_overrides)
    shortest = min(meta["train_tokens"], meta["val_tokens"])
    if space.block_size[1] + 2 > shortest:
        raise UserError(f"search space: block_size up to {space.block_size[1]} needs more than the corpus's "
                        f"{shortest} tokens in its smaller split")

    name = settings.study_name or f"{slug(env['device_name'])}-{slug(Path(settings.data).stem)}"
    results_dir = settings.results / name
    created = not results_dir.exists()
    check_writable(results_dir)
    try:
        storage = settings.storage or f"sqlite:///{(results_dir / 'study.db').resolve()}"
        check_sqlite_file(storage, results_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = "minimize" if settings.objective == "loss" else "maximize"
        study = open_study(name, storage, direction, make_sampler(settings.sampler, settings.seed),
                           make_pruner(settings.pruner, settings.reports))
        check_fingerprint(study, fingerprint(env, corpus_fingerprint(meta), dtype, settings, space))
    except BaseException:
        if created:  # a storage that would not open leaves no empty results folder behind
            shutil.rmtree(results_dir, ignore_errors=True)
        raise
    (results_dir / "logs").mkdir(exist_ok=True)
    # Re-seed with the number of trials already run, so a resumed study does not replay its first draws.
    study.sampler = make_sampler(settings.sampler, settings.seed + len(study.get_trials(deepcopy=False)))
    study.set_user_attr("environment", env)
    study.set_user_attr("vocab_size", meta["vocab_size"])
    study.set_user_attr("settings", {
        "budget": settings.budget, "objective": settings.objective, "dtype": dtype, "pruner": settings.pruner,
        "memory_limit_bytes": settings.memory_limit, "space": space.to_dict(), "eval_iters": settings.eval_iters,
        "eval_batch_size": settings.eval_batch_size, "corpus": str(settings.data), "reports": settings.reports,
        "seed": settings.seed,
    })
    close_stale_trials(study)
    return Session(settings, study, space, env, meta, data_dir, results_dir, dtype, storage)


def run_trial(session: Session, runner: TrialRunner, target: str | None = None) -> tuple[int, TrialRun, dict]:
    """Ask for a configuration, train it in its own process, record and tell how it went."""
    s, study = session.settings, session.study
    trial = study.ask()
    try:
        params = session.space.suggest(trial)
        model_cfg, train_cfg = trial_configs(params, s, session.meta["vocab_size"], session.dtype,
                                             session.env["device"])
        job = {"model": model_cfg, "train": train_cfg, "data": str(session.data_dir),
               "device": session.env["device"], "memory_limit": s.memory_limit,
               "log": str(session.results_dir / "logs" / f"trial_{trial.number:04d}.log"),
               "eval_interval_seconds": None if s.trial_steps else s.trial_seconds / s.reports}
        if target:
            job["target"] = target  # tests swap in a misbehaving stand-in for gptcore.train.train

        def on_eval(k: int, step: int, train_loss: float, val_loss: float) -> bool:
            if s.objective != "loss" or not math.isfinite(val_loss):
                return False
            trial.report(val_loss, k)
            return k < s.reports and trial.should_prune()  # the last report is the result: never prune it

        run = runner.run(job, on_eval, session.timeout)
        record(trial, run, params, session.env)
    except BaseException as exc:
        # Whatever went wrong in the parent between ask and tell, the trial is closed, never left RUNNING.
        trial.set_user_attr("status", "interrupted" if isinstance(exc, KeyboardInterrupt) else "error")
        trial.set_user_attr("error", f"tuner: {type(exc).__name__}: {exc}"[:300])
        study.tell(trial, state=TrialState.FAIL)
        raise
    if run.status == "ok":
        value = run.result["val_loss"] if s.objective == "loss" else run.result["tokens_per_s"]
        if s.objective == "loss" and s.reports not in {k for k, *_ in run.evals}:
            trial.report(value, s.reports)
        study.tell(trial, value)
    else:
        study.tell(trial, state=STATE_OF[run.status])
    return trial.number, run, params


def run_study(settings: TuneSettings, runner: TrialRunner | None = None, target: str | None = None) -> StudyOutcome:
    """Run (or resume) the study until it holds settings.trials trials; then write the results."""
    from tune.report import write_report

    runner = runner or TrialRunner()
    session = open_session(settings, runner)
    study = session.study
    done = len(study.get_trials(deepcopy=False))
    remaining = max(settings.trials - done, 0)
    say = tqdm.write
    say(f"study {study.study_name}: {done} trial(s) so far, running {remaining} more on "
        f"{session.env['device_name']} ({session.dtype}, {settings.budget} per trial, objective {settings.objective})")
    say(f"storage {session.storage}\nresults {session.results_dir}\n"
        f"search space:\n{session.space.describe()}")
    if remaining:
        study.set_user_attr("busy_cores_at_start", warn_if_busy(say))
    interrupted, ran, counts = False, 0, {}
    bar = tqdm(total=remaining, unit="trial", desc="tune", disable=not settings.progress)
    try:
        for _ in range(remaining):
            number, run, params = run_trial(session, runner, target)
            ran += 1
            counts[run.status] = counts.get(run.status, 0) + 1
            say(describe_run(number, run, params, study.trials[number].user_attrs))
            bar.update(1)
            best = _best_value(study)
            bar.set_postfix(best=f"{best:.4g}" if best is not None else "-", **counts)
            if run.status == "interrupted":
                interrupted = True
                break
    except KeyboardInterrupt:  # between trials: nothing is running, nothing to record
        interrupted = True
    finally:
        bar.close()
    for line in health.study_warnings({t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}):
        say(f"warning: {line}")
    write_report(study, session.results_dir)
    return StudyOutcome(study=study, results_dir=session.results_dir, ran=ran, interrupted=interrupted)


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None
