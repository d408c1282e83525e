"""The loss a trial will reach at the target, predicted from its loss at a rung, and the pruner that uses it.

Successive halving keeps the best 1/eta of every rung. While the sampler keeps improving, most new trials are in
that best third, so most of them train to the target even when the study already holds a better one: in the
replay a 20-trial study trained 7 of its trials all the way. The predictor asks the question that matters
instead: *can this trial still beat the incumbent?*

It learns from the study itself. Every trial that reached the target gives a pair (its loss at rung k, its loss
at the target). A straight line through those pairs, with the spread of the points about it, predicts the target
loss of a trial seen only at rung k, with an uncertainty that grows for a loss unlike those seen (a new best at the
rung is far from the line's middle, so it is rarely stopped). A trial is stopped when even an optimistic reading
of its prediction (Z standard deviations below it) cannot beat the best loss at the target so far.

Until MIN_PAIRS trials reached the target there is no line, and successive halving decides alone. After that the
trial must pass both: successive halving's rung (it is in the best 1/eta) and the predictor's bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tune.core.schema import HALVING, MEDIAN, PREDICTION

MIN_PAIRS = 4  # trials that reached the target before the line is trusted (2 points fit any line exactly)
Z = 2.0  # how optimistic the bound is, in predicted standard deviations (chosen by the replay)


@dataclass(frozen=True)
class Prediction:
    """A trial's predicted loss at the target, its standard deviation and the pairs it was fitted on."""

    mean: float
    sd: float
    pairs: int

    def bound(self, z: float = Z) -> float:
        """The optimistic end: the loss the trial reaches if it is `z` standard deviations luckier than the line."""
        return self.mean - z * self.sd


def fit_predict(pairs: list[tuple[float, float]], x: float) -> Prediction | None:
    """Least squares through (rung loss, target loss) pairs, read at `x` with its prediction interval's sd
    (None below MIN_PAIRS pairs, or when the rung losses do not vary or the line does not rise)."""
    n = len(pairs)
    if n < MIN_PAIRS:
        return None
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((v - mx) ** 2 for v in xs)
    if sxx <= 0:
        return None
    slope = sum((a - mx) * (b - my) for a, b in pairs) / sxx
    if slope <= 0:  # a worse rung loss predicting a better target loss: no line to trust
        return None
    mean = my + slope * (x - mx)
    residual = math.sqrt(sum((b - my - slope * (a - mx)) ** 2 for a, b in pairs) / (n - 2))
    # The prediction interval of a new point, not the line's: the line's own uncertainty plus the points' spread.
    return Prediction(mean, residual * math.sqrt(1 + 1 / n + (x - mx) ** 2 / sxx), n)


def rung_pairs(study: optuna.Study, step: int) -> list[tuple[float, float]]:
    """(loss at report step `step`, loss at the target) of every trial of `study` that reached the target."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        x = t.intermediate_values.get(step)
        if x is not None and t.value is not None and math.isfinite(x) and math.isfinite(t.value):
            out.append((float(x), float(t.value)))
    return out


def predict(study: optuna.Study, step: int, loss: float) -> Prediction | None:
    """The target loss a trial with `loss` at report step `step` is predicted to reach (None: too few pairs)."""
    return fit_predict(rung_pairs(study, step), loss)


def incumbent(study: optuna.Study) -> float | None:
    """The best loss at the target so far (None before any trial reached it)."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None and math.isfinite(t.value)]
    return min(values, default=None)


class PredictivePruner(optuna.pruners.BasePruner):
    """Successive halving, and once MIN_PAIRS trials reached the target, also stop a trial whose predicted target
    loss cannot beat the incumbent even `z` standard deviations luckier than predicted."""

    def __init__(self, halving: optuna.pruners.BasePruner, z: float = Z) -> None:
        if not z >= 0:
            raise ValueError(f"z must be >= 0, got {z}")
        self._halving, self._z = halving, z

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Stop the trial at its last reported rung?"""
        return self.reason(study, trial) is not None

    def reason(self, study: optuna.Study, trial: FrozenTrial) -> str | None:
        """'halving' (not in the best 1/eta of its rung), 'prediction' (cannot beat the incumbent) or None."""
        if self._halving.prune(study, trial):
            return HALVING
        step = trial.last_step
        if step is None:
            return None
        p = predict(study, step, trial.intermediate_values[step])
        return PREDICTION if cannot_win(p, incumbent(study), self._z) else None


def cannot_win(p: Prediction | None, best: float | None, z: float = Z) -> bool:
    """Whether a run predicted `p` cannot beat `best` even `z` standard deviations luckier (False without both)."""
    return p is not None and best is not None and p.bound(z) > best


def prediction_attrs(p: Prediction, rung: int, best: float | None) -> dict[str, float | int | None]:
    """What a run records of its latest prediction: the report measures the line's error from it."""
    return {"predicted_loss": round(p.mean, 6), "predicted_sd": round(p.sd, 6), "predicted_rung": rung,
            "predicted_pairs": p.pairs, "incumbent_loss": best}


def stop_reason(pruner: optuna.pruners.BasePruner, study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why `pruner` stops `trial` at its last rung: 'halving', 'median', 'prediction', or None (it trains on)."""
    if isinstance(pruner, PredictivePruner):
        return pruner.reason(study, trial)
    if not pruner.prune(study, trial):
        return None
    return MEDIAN if isinstance(pruner, optuna.pruners.MedianPruner) else HALVING
