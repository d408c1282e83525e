"""The study as best.json answers it: replayed studies charged for what a real study spends besides its searched
trials (the reference presets first, the confirmation runs last) and with re-run noise, so the figure is the regret
of the answer the study would name at each moment, against simulated study time in target budgets.

tune.search.study runs the references before the search and the confirmation runs after it; the report names the
best single run until the confirmation completes, then the best mean (tune.report.frame.choose_winner). Replayed
here the same way:
- each run's losses are the recorded ones plus one draw of run-to-run noise (N(0, noise), one offset per run: a
  seed moves a whole curve) - the table's value is the configuration's truth, which the study never sees;
- the answer at any moment is the best observed single run so far, then, once its --confirm configurations have
  run CONFIRM_RUNS more times each, the best mean; its regret is its *true* loss minus the table's best;
- a reference is the table's median configuration and cannot win (the table holds no reference rows): run first,
  it costs one run to the target; run last (the tuner's default since #22), it is judged at its rungs against
  the answer by tune.search.predict and stops where it cannot beat it;
- confirmation runs one run at a time by tune.core.confirm.next_confirmation (sequential, the default since #22)
  or all of them.
A Policy is one whole way of running a study: its Strategy (sampler, pruner, rungs) and its Spend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.tuner_replay import Strategy, cost_to, replayed_study, run_recorded
from benchmarks.tuner_table import Table
from tune.core.confirm import CONFIRM_RUNS, next_confirmation
from tune.search.predict import predict
from tune.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER

# Run-to-run sd of the validation loss at the target, measured with --confirm on 9 real 20-trial studies (12 s
# target, 2-core CPU, median over the studies): tune/search/settings.py DEFAULT_CONFIRM's comment.
NOISE = 0.030
READ_AT = (4, 8, 16)  # study time, in target budgets, at which the answer's regret is read


@dataclass(frozen=True)
class Spend:
    """What the real study spends besides its searched trials, and the noise of a run."""

    references: int = 2
    confirm: int = 2
    noise: float = NOISE
    references_last: bool = True  # after the search, judged at its rungs against the answer (else first, whole)
    sequential: bool = True  # confirm until the answer is settled (else every run)


@dataclass(frozen=True)
class Policy:
    """One way of running a whole study: how it searches and what it spends around the search."""

    strategy: Strategy
    spend: Spend
    label: str = ""

    @property
    def name(self) -> str:
        """Its label, else its strategy's name and how it spends."""
        if self.label:
            return self.label
        s = self.spend
        return (f"{self.strategy.name}, references {'last' if s.references_last else 'first'}, "
                f"confirm {'sequential' if s.sequential else 'all'}")


# The tuner before #22: TPE with 5 start-up trials, successive halving over rungs no shorter than 4 s (2 rungs for
# a 12 s target, 3 for 36 s), the references first, every confirmation run. Its rungs depend on the table.
BEFORE_MIN_RUNG_S = 4.0


def before(table: Table) -> Policy:
    """The tuner's defaults before #22, on `table`'s target."""
    rungs = 1
    while rungs < 4 and table.budget.amount / 3**rungs >= BEFORE_MIN_RUNG_S:  # RungPlan's rule with a 4 s floor
        rungs += 1
    return Policy(Strategy("tpe-startup5", "asha", rungs), Spend(references_last=False, sequential=False),
                  "before #22: tpe(5) + asha, references first, confirm all")


def now() -> Policy:
    """The tuner's defaults: its sampler, pruner and rung plan; references last; sequential confirmation."""
    return Policy(Strategy(DEFAULT_SAMPLER, DEFAULT_PRUNER), Spend(), "the default: tpe(3) + predict, references "
                  "last, confirm sequential")


@dataclass(frozen=True)
class Answers:
    """One replayed study: the simulated clock at each change of the answer, and the answer's true regret."""

    clock: np.ndarray  # seconds at which the named answer changed (ascending)
    regret: np.ndarray  # its true regret from then on
    end: float  # seconds the whole study took (references, trials, confirmation)

    def at(self, seconds: float) -> float:
        """The regret of the answer named at `seconds` of study time (inf before any)."""
        k = np.searchsorted(self.clock, seconds, side="right") - 1
        return float(self.regret[k]) if k >= 0 else math.inf

    def first_within(self, margin: float) -> float:
        """The study time at which the answer first came within `margin` of the best (inf: never)."""
        hit = np.nonzero(self.regret <= margin)[0]
        return float(self.clock[hit[0]]) if hit.size else math.inf


def noisy(row: dict, columns: list[str], offset: float) -> dict:
    """The row as one run would record it: every loss moved by the run's noise."""
    return {**row, **{c: row[c] + offset for c in [*columns, "val_loss"] if not pd.isna(row[c])}}


def replay_answers(table: Table, strategy: Strategy, seed: int, trials: int, spend: Spend) -> Answers:
    """Replay one study of `trials` trials with `strategy`, charged and judged as the real study is."""
    rng = np.random.default_rng(seed)
    reference_s = float(table.frame.loc[table.frame["status"] == "ok", "trial_seconds"].median())
    clock = 0.0 if spend.references_last else spend.references * reference_s
    observed: dict[int, list[float]] = {}  # row position -> its observed losses at the target
    times: list[float] = []
    regrets: list[float] = []
    named = None  # the row the answer names now
    with replayed_study(table, strategy, seed) as (study, plan, columns):
        for _ in range(trials):
            trial = study.ask()
            position = table.nearest(table.space.suggest(trial))
            row = noisy(table.rows[position], columns, rng.normal(0, spend.noise))
            seconds, value = run_recorded(study, trial, row, plan, columns, len(table.fractions))
            clock += seconds
            if value is None:
                continue
            observed.setdefault(position, []).append(value)
            best = min(observed, key=lambda p: min(observed[p]))  # the best single run: what the report names
            if best != named:
                named = best
                times.append(clock)
                regrets.append(_regret(table, best))
        if spend.references_last:  # judged at their rungs by the prediction (--pruner predict), else whole
            clock += sum(_reference_last(table, study, plan, columns, observed, rng, spend,
                                         judged=strategy.pruner == "predict") for _ in range(spend.references))
    # Confirmation, after the search: the best --confirm configurations run CONFIRM_RUNS more times each, then the
    # answer is the best mean over each one's runs.
    top = sorted(observed, key=lambda p: min(observed[p]))[:spend.confirm]
    for position in _confirm_order(top, observed, spend, rng, table):
        clock += cost_to(table.rows[position], len(table.fractions), 1.0, 1)
    if top:
        times.append(clock)
        regrets.append(_regret(table, min(top, key=lambda p: float(np.mean(observed[p])))))
    return Answers(np.asarray(times, dtype=float), np.asarray(regrets, dtype=float), clock)


def _confirm_order(top, observed, spend, rng, table):
    """Yield the confirmation runs as they are made (each appends its loss to observed): every one, or sequentially
    until the answer is settled (tune.core.confirm.next_confirmation)."""
    runs = {p: 0 for p in top}
    while True:
        if spend.sequential:
            pick = next_confirmation({p: observed[p] for p in top}, runs, CONFIRM_RUNS)
        else:
            pick = next((p for p in top if runs[p] < CONFIRM_RUNS), None)
        if pick is None:
            return
        runs[pick] += 1
        observed[pick].append(float(table.rows[pick]["val_loss"]) + rng.normal(0, spend.noise))
        yield pick


def _reference_last(table, study, plan, columns, observed, rng, spend, judged: bool) -> float:
    """Seconds one reference (the table's median configuration) costs after the search: when `judged`, stopped at
    the first rung where even its optimistic prediction cannot beat the answer; else to the target."""
    ok = table.frame[table.frame["status"] == "ok"]
    row = table.rows[int(ok.index[np.argsort(ok["val_loss"].to_numpy())[len(ok) // 2]])]
    row = noisy(row, columns, rng.normal(0, spend.noise))
    best = min((min(v) for v in observed.values()), default=None)
    for k, column in enumerate(columns[:-1] if judged else ()):
        p = predict(study, plan.steps[k], float(row[column]))
        if best is not None and p is not None and p.bound() > best:
            return cost_to(row, len(table.fractions), plan.fractions[k], k + 1)
    return cost_to(row, len(table.fractions), 1.0, len(columns))


def _regret(table: Table, position: int) -> float:
    """How much worse the configuration truly is than the table's best (its recorded loss is its truth)."""
    return float(table.rows[position]["val_loss"]) - table.best


def compare_answers(table: Table, policies: tuple[Policy, ...], seeds: range, trials: int,
                    progress=None) -> pd.DataFrame:
    """One row per (policy, seed): the answer's regret at READ_AT budgets, the study's length and the time its
    answer first came within the noise of the best, all in target budgets."""
    unit = table.run_seconds
    rows = []
    for policy in policies:
        for seed in seeds:
            a = replay_answers(table, policy.strategy, seed, trials, policy.spend)
            row = {"strategy": policy.name, "seed": seed,
                   "study_budgets": a.end / unit,
                   "budgets_within_noise": a.first_within(policy.spend.noise) / unit}
            row.update({f"regret_at_{b}b": a.at(b * unit) for b in READ_AT})
            rows.append(row)
            if progress is not None:
                progress.update(1)
    return pd.DataFrame(rows)


def summarise_answers(runs: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: median and IQR of the answer's regret at READ_AT budgets, the median study length and time to
    within noise (a seed that never got there counts as infinitely late), in the order given."""
    g = runs.groupby("strategy", sort=False)
    out = pd.DataFrame(index=pd.Index(runs["strategy"].unique(), name="strategy"))
    for b in READ_AT:
        col = runs[f"regret_at_{b}b"]
        out[f"regret@{b}b"] = g[col.name].median()
        out[f"IQR@{b}b"] = g[col.name].quantile(0.75) - g[col.name].quantile(0.25)
    out["study budgets"] = g["study_budgets"].median()
    out["budgets to within noise"] = g["budgets_within_noise"].median()
    out["within noise"] = g["budgets_within_noise"].apply(lambda s: f"{int(np.isfinite(s).sum())}/{len(s)}")
    return out.reset_index()
