"""Epochs of the corpus a trial sees at the target budget: the one threshold above which the study warns (before
the first trial in the plan, tune.search.session; about the winner in summary.md, tune.report.summary)."""

from __future__ import annotations

# A configuration that sees its training split this many times or more: on a small corpus the best at this budget
# may be the best at memorising it (validation loss is held out, but the ranking is then about this corpus, not
# language).
MANY_EPOCHS = 10


def epochs_at_target(tokens: float, train_tokens: int) -> float:
    """Passes over the training split that `tokens` training tokens make."""
    if train_tokens <= 0:
        raise ValueError(f"train_tokens must be positive, got {train_tokens}")
    return tokens / train_tokens
