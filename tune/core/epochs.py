"""Epochs of the corpus a trial sees at the target budget, and the one threshold above which the study warns:
before the first trial in the plan (tune.search.session), about the winner in summary.md (tune.report.summary)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tune.core.budget import Budget

# A configuration that sees its training split this many times or more: on a small corpus the best at this budget
# may be the best at memorising it (validation loss is held out, but the ranking is then about this corpus, not
# language).
MANY_EPOCHS = 10


@dataclass(frozen=True)
class EpochEstimate:
    """Passes over the training split one configuration makes at the target, and where the figure comes from."""

    epochs: float
    budget: Budget
    train_tokens: int
    what: str  # the configuration: "ref course-default: batch 32 x block 64"
    how: str  # the estimate: "exact for a step budget", "from a 3 s throughput probe of it: ..."
    span: tuple[float, float] | None = None  # the search space's fewest and most (step budget: exact)

    @classmethod
    def of_steps(cls, budget: Budget, sequences: int, block: int, train_tokens: int, what: str,
                 span: tuple[int, int] | None = None) -> EpochEstimate:
        """A step budget: steps x sequences per step x block / training tokens, exact (`span`: the space's least
        and most tokens per step)."""
        steps = budget.steps
        if steps is None:
            raise ValueError(f"of_steps needs a step budget, got {budget}")
        epochs = [steps * t / train_tokens for t in (sequences * block, *(span or ()))]
        return cls(epochs[0], budget, train_tokens, what, "exact for a step budget",
                   (epochs[1], epochs[2]) if span else None)

    @classmethod
    def of_seconds(cls, budget: Budget, tokens_per_s: float, train_tokens: int, what: str,
                   how: str) -> EpochEstimate:
        """A time budget at a throughput: tokens/s x seconds / training tokens (`how`: where tokens/s came from)."""
        seconds = budget.seconds
        if seconds is None or not (math.isfinite(tokens_per_s) and tokens_per_s > 0):
            raise ValueError(f"of_seconds needs a time budget and a positive tokens/s, got {budget}, {tokens_per_s}")
        return cls(tokens_per_s * seconds / train_tokens, budget, train_tokens, what, how)

    @property
    def many(self) -> bool:
        """Whether the target would see the corpus more than MANY_EPOCHS times."""
        return self.epochs > MANY_EPOCHS

    def line(self) -> str:
        """The plan's line."""
        span = (f"; the search space spans {_figure(self.span[0])} to {_figure(self.span[1])}" if self.span else "")
        return (f"epochs of the corpus per trial at the target: about {_figure(self.epochs)} for {self.what} "
                f"({self.how}){span}")

    def warning(self) -> str | None:
        """The warning printed before the first trial when the target sees the corpus more than MANY_EPOCHS
        times; None below."""
        if not self.many:
            return None
        share = MANY_EPOCHS / self.epochs
        shorter = (f"{max(1, math.floor(self.budget.amount * share))}steps" if self.budget.steps
                   else f"{_down(self.budget.amount * share):g}s")  # a flag value: '2.1s', '150s'

        return (f"warning: at the target ({self.budget}) a trial would see the corpus's training split about "
                f"{self.epochs:,.0f} times ({self.what}; {self.how}), more than {MANY_EPOCHS}: the study would rank "
                f"configurations by how well they memorise {self.train_tokens:,} tokens. Give it a bigger corpus "
                f"(--data), or a shorter target (--budget {shorter} or less sees it at most about {MANY_EPOCHS} "
                f"times).")


def _down(x: float) -> float:
    """`x` rounded down to two significant digits (a shorter budget must not overshoot the threshold)."""
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.floor(x / scale * (1 + 1e-12)) * scale


def _figure(epochs: float) -> str:
    """3 significant digits, never an exponent: 0.0123, 58.8, 3,015."""
    return f"{epochs:,.0f}" if epochs >= 100 else f"{epochs:.3g}"
