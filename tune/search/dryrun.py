"""--dry-run: what a study would do, before it spends anything: the plan the tuner prints before its first trial
(target, rungs, cost floor, epochs of the corpus), the search space, and the predicted memory of a few sampled
configurations. Nothing of the study is created: no storage, no results folder, no file.

The flags are checked as a run checks them (tune.search.session.survey: the corpus prepared as a run prepares it,
into gptcore's cache, and the device probed). The memory tracer and, where a run would run it, the throughput
probe run in trial processes, as in a study (the parent stays torch-free); their logs go to a temporary folder
that is removed before the dry run ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from gptcore.memory import Calibration
from tune.core.confirm import CONFIRM_RUNS
from tune.core.epochs import EpochEstimate
from tune.core.space import PARAMS
from tune.core.units import MIB
from tune.exec.protocol import TrialJob
from tune.exec.runner import TrialRunner
from tune.memory.judge import DEFAULT_MARGIN, Verdict
from tune.search.session import (
    RUN_OVERHEAD_S,
    Session,
    Survey,
    epoch_estimate,
    plan_message,
    survey,
    target_budgets,
    trial_configs,
)
from tune.search.settings import TuneSettings
from tune.store.spec import resolve_storage

# Configurations drawn from the space whose memory the dry run predicts: a few, each traced in a process of its
# own (a second or two each on a CPU).
DRY_RUN_SAMPLES = 5
TRACE_TIMEOUT_S = 120.0 + RUN_OVERHEAD_S


def dry_run(settings: TuneSettings, runner: TrialRunner | None = None, samples: int | None = None,
            say: Callable[[str], None] = print) -> None:
    """Print the plan, the space and the memory of `samples` (DRY_RUN_SAMPLES) drawn configurations; create nothing
    of the study."""
    runner = runner or TrialRunner()
    samples = DRY_RUN_SAMPLES if samples is None else samples
    surveyed = survey(settings, runner)
    spec = resolve_storage(settings.store.storage, surveyed.results_dir / "study.db")
    resumed = " (it exists: a run resumes it, its trials counting toward --trials)" \
        if surveyed.results_dir.exists() else ""
    say(f"dry run of study {surveyed.name}: storage {spec.display}, results {surveyed.results_dir}{resumed}; "
        f"nothing is created")
    with tempfile.TemporaryDirectory(prefix="tune-dry-run-") as tmp:
        session = _session(settings, surveyed, Path(tmp))
        (session.results_dir / "logs").mkdir()
        references = list(surveyed.choice.references)
        confirms = settings.search.confirm * CONFIRM_RUNS
        remaining = settings.search.trials
        # The epochs estimate as the run makes it: a throughput probe only where the run would pay for one.
        budgets = target_budgets(session, remaining, references, confirms)
        epochs = epoch_estimate(session, runner, references, budgets * (session.budget.seconds or 0))
        say(plan_message(session, remaining, references, confirms, epochs))
        if isinstance(epochs, EpochEstimate) and epochs.warning():
            say(epochs.warning())
        say(f"search space:\n{session.space.describe()}")
        say(memory_lines(session, runner, samples))
    say("dry run: no study, results folder or file was created; run the same command without --dry-run to start")


def _session(settings: TuneSettings, surveyed: Survey, folder: Path) -> Session:
    """A Session for the plan's functions: an empty study in memory, `folder` for the trial processes' logs."""
    choice = surveyed.choice
    study = optuna.create_study()  # in memory: no storage is opened
    return Session(settings, study, None, choice.space, surveyed.env, surveyed.meta, surveyed.data_dir, folder,
                   choice.dtype, None, choice.budget, choice.plan, surveyed.slots, choice.references, None)


def memory_lines(session: Session, runner: TrialRunner, samples: int) -> str:
    """The predicted peak of `samples` configurations drawn at random from the space (the study's seed), each
    traced in a trial process as a trial's step is, judged against the memory limit as the study would judge it
    before any trial has measured anything (no calibration yet: the traced bytes as they are)."""
    limit = session.memory_limit
    sampler = optuna.samplers.RandomSampler(seed=session.settings.search.seed)
    draws = optuna.create_study(sampler=sampler)
    against = (f"against the {MIB.text(limit, True)} limit" if limit
               else "no memory limit: a CPU without --memory-limit")
    lines = [f"memory of {samples} configuration(s) drawn from the space, traced as a trial traces its step before "
             f"training ({against}; no calibration yet):"]
    for k in range(1, samples + 1):
        params = session.space.suggest(draws.ask())
        lines.append(f"  {k}. {describe(params)}: {_predict(session, runner, params, k, limit)}")
    return "\n".join(lines)


def _predict(session: Session, runner: TrialRunner, params: dict[str, Any], k: int, limit: int | None) -> str:
    """One configuration's predicted peak and what the study would do with it, in words."""
    model, train = trial_configs(params, session)
    slot = session.slots[0]
    job = TrialJob(model=model, train=train, data=str(session.data_dir), device=session.env["device"],
                   memory_limit=session.settings.execution.memory_limit,
                   log=str(session.results_dir / "logs" / f"dry_run_{k}.log"), eval_at=[], cores=list(slot.cores),
                   gpu=slot.gpu)
    traced: dict[str, Any] = {}

    def skip_it(memory: dict[str, Any] | None) -> bool:  # traced: never train it
        traced.update(memory or {})
        return True

    run = runner.run(job, lambda *_: False, TRACE_TIMEOUT_S, on_predicted=skip_it)
    if not traced:
        return f"not traced ({run.status.value}: {run.message or 'no message'})"
    if traced.get("error"):
        return f"not traced ({traced['error']}); a run trains it unpredicted"
    verdict = Verdict.judge(traced, Calibration(), limit, session.settings.execution.predict, DEFAULT_MARGIN)
    peak = MIB.text(verdict.predicted_bytes, True)
    if limit is None:
        return f"predicted {peak}"
    if verdict.skip:
        return f"predicted {peak}, over the limit by more than {DEFAULT_MARGIN.share:.0%}: a run would skip it"
    if verdict.predicted_bytes > limit:
        return f"predicted {peak}, over the limit: a run would try it (--no-predict, or within the margin)"
    return f"predicted {peak}: fits"


def describe(params: dict[str, Any]) -> str:
    """'batch 8 x block 64, 2 layers of 128 with 4 heads, lr 1.2e-03, dropout 0.1'."""
    extra = "".join(f", {k} {v:.3g}" if isinstance(v, float) else f", {k} {v}"
                    for k, v in params.items() if k not in PARAMS)
    return (f"batch {params['batch_size']} x block {params['block_size']}, {params['n_layer']} layer(s) of "
            f"{params['n_embed']} with {params['n_head']} head(s), lr {params['learning_rate']:.1e}{extra}")
