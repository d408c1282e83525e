"""Replay whole tuner studies against recorded learning curves: which sampler and pruner find good configurations
in fewer trials and less time?

A replayed study is the tuner's own study loop without the training: the same samplers and pruners
(tune.search.strategy), the same search space and rung plan (tune.core.budget), the same mapping of outcomes to
Optuna states (tune.core.outcomes.Status). Each configuration the sampler proposes is answered by the nearest
recorded one (its loss at every rung, its status), and the study's clock advances by what that configuration took to
reach the rung where it stopped. Many seeds per strategy take minutes, where one real 50-trial study takes an hour.

What it does not model: the noise of a re-run (each configuration has one recorded run, the "truth" here) and
parallel workers (studies are replayed one trial at a time).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from benchmarks.tuner_table import Table
from gptcore.errors import UserError
from tune.core.budget import RungPlan
from tune.core.outcomes import Status
from tune.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER, make_pruner, make_sampler
from tune.store.told import state_of

CHECKPOINTS = (10, 25, 50)  # trials at which regret is read
WITHIN = 0.01  # "close to the best": within 1 % of the best recorded loss


@dataclass(frozen=True)
class Strategy:
    """A sampler, a pruner and the number of rungs (None: the tuner's default plan for the recorded budget)."""

    sampler: str
    pruner: str
    rungs: int | None = None

    @property
    def name(self) -> str:
        """'tpe + asha', 'random + none (3 rungs)'."""
        return f"{self.sampler} + {self.pruner}" + (f" ({self.rungs} rungs)" if self.rungs else "")


# The defaults before this benchmark existed: Optuna 5's TPESampler as the tuner built it (multivariate - Optuna's
# default for one objective - with 10 start-up trials) and successive halving.
TODAY = Strategy("tpe-startup10", "asha")
DEFAULT = Strategy(DEFAULT_SAMPLER, DEFAULT_PRUNER)
STRATEGIES = (
    TODAY, DEFAULT, Strategy("tpe-univariate", "asha"),
    Strategy("tpe", "none"), Strategy("tpe", "median", 3),
    Strategy("tpe", "asha", 3), Strategy("tpe", "hyperband", 3),
    Strategy("cmaes", "asha"),
    Strategy("qmc", "asha"), Strategy("random", "asha"), Strategy("random", "none"),
)
# Replay-only: Optuna's GP sampler (not offered by the tuner, see sampler_for). ~50x slower to replay than TPE.
GP_STRATEGIES = (Strategy("gp", "none"), Strategy("gp", "asha"))


@dataclass(frozen=True)
class Replayed:
    """One replayed study: per trial, the simulated clock when it ended and the best loss at the target so far."""

    clock: np.ndarray  # seconds, cumulative
    best: np.ndarray  # best value of a trial that reached the target, inf before the first


def sampler_for(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The tuner's samplers, plus Optuna's GP sampler (replay only: it needs torch, which the tuner's parent never
    imports, and scipy)."""
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    startup = {"tpe-startup10": 10, "tpe-startup5": 5}.get(name)
    if startup:  # the tuner's TPE before the replay (Optuna's default of 10 start-up trials), and before #22 (5)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, n_startup_trials=startup)
    return make_sampler(name, seed)


def cost_to(row: dict[str, Any], recorded: int, fraction: float, evals: int) -> float:
    """Seconds a run of `row` takes to reach `fraction` of the target having evaluated `evals` times: its start-up
    and warm-up (everything but timed training and evaluation) + the timed training + the evaluations."""
    train, evaluation, total = row["train_seconds"], row["eval_seconds"], row["trial_seconds"]
    if any(pd.isna(v) for v in (train, evaluation, total)):
        return float(total) if not pd.isna(total) else 0.0
    overhead = max(total - train - evaluation, 0.0)
    return overhead + fraction * train + evaluation * evals / recorded


@contextlib.contextmanager
def replayed_study(table: Table, strategy: Strategy, seed: int) -> Iterator[tuple[optuna.Study, RungPlan, list[str]]]:
    """An in-memory study run as the tuner runs one with `strategy`, its rung plan and the table's columns for it;
    Optuna's experimental-feature warnings silenced while it is used."""
    plan = RungPlan.for_budget(table.budget, table.meta["eta"], strategy.rungs)
    columns = [table.rung_column(f) for f in plan.fractions]
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # thousands of in-memory studies: no line per study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings of Optuna's samplers
        # A fixed name: Hyperband assigns brackets by a hash of the study name and trial number, so a random name
        # would make its rows differ from one replay to the next.
        yield (optuna.create_study(study_name=f"replay-{seed}", direction="minimize",
                                   sampler=sampler_for(strategy.sampler, seed),
                                   pruner=make_pruner(strategy.pruner, plan)), plan, columns)


def replay(table: Table, strategy: Strategy, seed: int, trials: int) -> Replayed:
    """Replay one study of `trials` trials with `strategy`."""
    with replayed_study(table, strategy, seed) as (study, plan, columns):
        clock, best = 0.0, math.inf
        clocks, bests = np.empty(trials), np.empty(trials)
        for i in range(trials):
            trial = study.ask()
            row = table.rows[table.nearest(table.space.suggest(trial))]
            seconds, value = run_recorded(study, trial, row, plan, columns, len(table.fractions))
            clock += seconds
            if value is not None:
                best = min(best, value)
            clocks[i], bests[i] = clock, best
    return Replayed(clocks, bests)


def check_strategies(table: Table, strategies: tuple[Strategy, ...]) -> None:
    """Every strategy's rung plan must be one the table recorded: a one-line error before any replay."""
    for strategy in strategies:
        try:
            plan = RungPlan.for_budget(table.budget, table.meta["eta"], strategy.rungs)
            for fraction in plan.fractions:
                table.rung_column(fraction)
        except UserError as exc:
            raise UserError(f"--strategies {strategy.name}: {exc}") from None


def checkpoints(trials: int) -> list[int]:
    """The trial counts at which regret is read: CHECKPOINTS below `trials`, and `trials` itself."""
    return sorted({k for k in CHECKPOINTS if k < trials} | {trials})


def run_recorded(study: optuna.Study, trial: optuna.Trial, row: dict[str, Any], plan: RungPlan, columns: list[str],
         recorded: int) -> tuple[float, float | None]:
    """Feed `row`'s recorded curve to the trial as the tuner's on_eval would and tell its end: (simulated seconds,
    its loss at the target when it got there)."""
    n, status = len(plan.fractions), Status.parse(row["status"])
    for k, column in enumerate(columns):
        loss = row[column]
        if pd.isna(loss):  # the run ended before this rung (diverged, OOM, timeout): as the tuner tells it
            study.tell(trial, state=state_of(status) if status != Status.OK else TrialState.PRUNED)
            return float(row["trial_seconds"]), None
        trial.report(float(loss), plan.steps[k])
        if k < n - 1 and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return cost_to(row, recorded, plan.fractions[k], k + 1), None  # one evaluation per rung reached
    if status != Status.OK:
        study.tell(trial, state=state_of(status))
        return float(row["trial_seconds"]), None
    study.tell(trial, float(row["val_loss"]))
    return cost_to(row, recorded, 1.0, n), float(row["val_loss"])


def compare(table: Table, strategies: tuple[Strategy, ...], seeds: int, trials: int,
            progress: Any = None) -> pd.DataFrame:
    """One row per (strategy, seed): regret at each checkpoint, clock, time to within 1 % of the best, and the
    whole curve (simulated clock, regret) per trial."""
    target = table.best
    budget_s = table.run_seconds
    rows = []
    for strategy in strategies:
        for seed in range(seeds):
            r = replay(table, strategy, seed, trials)
            row = {"strategy": strategy.name, "seed": seed, "clock_budgets": r.clock[-1] / budget_s,
                   "curve": (r.clock, r.best - target)}  # for the plot; not written to the CSV
            for k in checkpoints(trials):
                row[f"regret_{k}"] = r.best[k - 1] - target
                row[f"budgets_{k}"] = r.clock[k - 1] / budget_s
            close = np.nonzero(r.best <= target * (1 + WITHIN))[0]
            row["budgets_to_1pct"] = r.clock[close[0]] / budget_s if close.size else math.inf
            for t in (10, 20, 40):
                done = np.nonzero(r.clock <= t * budget_s)[0]
                row[f"regret_at_{t}b"] = (r.best[done[-1]] - target) if done.size else math.inf
            rows.append(row)
            if progress is not None:
                progress.update(1)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, baseline: str = TODAY.name) -> pd.DataFrame:
    """Medians (and quartiles) per strategy, best first, with ratios of median regret to the baseline's."""
    def q(col: str, p: float) -> pd.Series:
        return runs.groupby("strategy", sort=False)[col].quantile(p)

    out = pd.DataFrame({"strategy": runs["strategy"].unique()}).set_index("strategy")
    read_at = sorted(int(c.split("_")[1]) for c in runs.columns if re.fullmatch(r"regret_\d+", c))
    for k in read_at:
        out[f"regret@{k}"] = q(f"regret_{k}", 0.5)
        out[f"IQR@{k}"] = (q(f"regret_{k}", 0.75) - q(f"regret_{k}", 0.25))
        # The mean as well: the table's regrets are discrete (the gap to the next-best recorded configurations),
        # so medians of two strategies often tie where their means do not.
        out[f"mean@{k}"] = runs.groupby("strategy", sort=False)[f"regret_{k}"].mean()
        out[f"budgets@{k}"] = q(f"budgets_{k}", 0.5)
    last = read_at[-1]
    out[f"vs today@{last}"] = out[f"regret@{last}"] / out.loc[baseline, f"regret@{last}"]
    for t in (10, 20, 40):
        out[f"regret@{t}b"] = q(f"regret_at_{t}b", 0.5)
    # A median, not an interpolated quantile: a seed that never got within 1 % counts as infinitely late.
    out["budgets to 1%"] = runs.groupby("strategy", sort=False)["budgets_to_1pct"].median()
    out["reached 1%"] = runs.groupby("strategy", sort=False)["budgets_to_1pct"].apply(
        lambda s: f"{int(np.isfinite(s).sum())}/{len(s)}")
    return out.sort_values(f"regret@{last}").reset_index()
