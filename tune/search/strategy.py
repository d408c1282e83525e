"""How a study searches: the sampler that proposes configurations and the pruner that stops weak ones at a rung.

The defaults are chosen by evidence, not by habit: `python -m benchmarks tuner replay` replays whole studies of
every strategy below against learning curves recorded with this tool (benchmarks/data/tuner_small.csv), for many
seeds, and docs/tuner-strategies.md keeps its table. Change a default only with a new replay to back it.
"""

from __future__ import annotations

import optuna

from gptcore.errors import UserError
from tune.core.budget import RungPlan
from tune.search.predict import PredictivePruner

SAMPLERS = ("tpe", "tpe-univariate", "random", "qmc", "cmaes")
PRUNERS = ("asha", "predict", "median", "hyperband", "none")
DEFAULT_SAMPLER = "tpe"
DEFAULT_PRUNER = "predict"
# predict: successive halving plus the learning-curve bound (tune.search.predict). With 3 rungs, references after
# the search and sequential confirmation, it reached at 8 target budgets the regret the old default (asha) reached
# at 16 in the replay, in half the study time (docs/tuner-strategies.md, "Half the time").
# TPE draws this many configurations at random before it models anything. Optuna's default is 10; the replay
# preferred 5 to 10 (52 against 50 of 100 50-trial studies within 1 % of the best), and 3 to 5 once the studies
# were judged by their cost in target budgets (median regret at 8 budgets 0.133 against 0.317, 100 held-out seeds).
TPE_STARTUP_TRIALS = 3


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (see SAMPLERS), seeded."""
    if name in ("tpe", "tpe-univariate"):
        # multivariate: one joint density over the six values, so TPE learns that they interact (a large model
        # wants a smaller learning rate; batch x block is the tokens per step). Optuna's own benchmark (issue
        # 2906) and our replay both rank it above the univariate TPE. The constant liar counts running trials
        # (other workers', other tuners') as bad results, so parallel asks spread out instead of all proposing
        # the same promising point; with one worker it changes nothing.
        # Optuna 5's TPESampler is multivariate by default for one objective (multivariate=None): the tuner's
        # TPE was already multivariate, with 10 start-up trials. The univariate TPE is offered for comparison.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=name == "tpe",
                                          n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        try:
            import scipy.stats  # noqa: F401  (QMCSampler draws its Sobol points with scipy, at the first trial)
        except ImportError:
            raise UserError("--sampler qmc needs the scipy package: pip install -e '.[replay]'") from None
        # Scrambled Sobol points: random search that covers the space more evenly.
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler needs it; a one-line message beats its ImportError)
        except ImportError:
            raise UserError("--sampler cmaes needs the cmaes package: pip install -e '.[replay]'") from None
        # Pruned trials are what most trials are under successive halving: without them CMA-ES learns from a few.
        return optuna.samplers.CmaEsSampler(seed=seed, consider_pruned_trials=True, warn_independent_sampling=False,
                                            n_startup_trials=TPE_STARTUP_TRIALS)
    raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(name: str, plan: RungPlan) -> optuna.pruners.BasePruner:
    """asha (asynchronous successive halving over the rungs), predict (asha and a learning-curve bound), median,
    hyperband or none."""
    if name == "asha":
        # Rungs at report steps 1, eta, eta**2...: at each, a trial trains on only if it is in the best 1/eta of
        # the trials that reached that rung so far (asynchronous: no waiting for a full bracket).
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=plan.eta,
                                                      min_early_stopping_rate=0)
    if name == "predict":
        # Successive halving, and once a few trials reached the target, a learning-curve bound: a trial that
        # cannot beat the incumbent stops even when it is in the best 1/eta of its rung (tune.search.predict).
        return PredictivePruner(make_pruner("asha", plan))
    if name == "median":
        # Never prune at the first rung nor before 5 trials have finished: Optuna prunes from step ==
        # n_warmup_steps on, and the first rung is reported at step 1.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=plan.steps[-1],
                                              reduction_factor=plan.eta)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")
