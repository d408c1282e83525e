"""The messages between the tuner and a trial process, defined once (the conversation: docs/signals.md).

The trial process (tune.exec.worker) sends, in this order: Ready once it is set up; Predicted when the job asks
for a memory prediction (the parent answers RUN or SKIP); Evaluated at each evaluation (the parent answers CONTINUE
or STOP); then one end: Finished (it trained) or Failed (an exception, classified). The parent
(tune.exec.runner) never imports torch: every message holds plain Python values.

The device probe answers once: Probed, or ProbeFailed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.core.outcomes import Outcome

# The parent's answers. STOP and CONTINUE go to gptcore.train's on_eval unchanged: "stop" is what ends training.
RUN, SKIP = "run", "skip"
CONTINUE, STOP = "continue", "stop"


@dataclass(frozen=True)
class Ready:
    """Set up (pinned, limited, data and model configs loaded): the trial's start-up time ends here."""


@dataclass(frozen=True)
class Predicted:
    """The traced step (gptcore.memory.StepMemory as a dict, or {"error": ...} when the trace failed), plus the
    process's baseline_bytes; the parent answers RUN or SKIP."""

    memory: dict[str, Any]


@dataclass(frozen=True)
class Evaluated:
    """The k-th evaluation (from 1) at `step`; the parent answers CONTINUE or STOP (prune)."""

    k: int
    step: int
    train_loss: float
    val_loss: float


@dataclass(frozen=True)
class Finished:
    """It trained: to the target, or until the parent said STOP. `result` is gptcore's TrainResult.to_dict() plus
    the kept model's `checkpoint`; `measure` is how much of the machine it got (tune.exec.health)."""

    result: dict[str, Any]
    measure: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """An exception ended it (an OOM, divergence, an error), as tune.core.outcomes.classify reads it."""

    outcome: Outcome
    measure: dict[str, Any]


@dataclass(frozen=True)
class Probed:
    """The device probe's answer: the device, its GPUs and cores, this process's baseline."""

    env: dict[str, Any]


@dataclass(frozen=True)
class ProbeFailed:
    """The device probe could not describe the device: bad input (user_error, e.g. --device cuda without CUDA)
    or a failure."""

    message: str
    user_error: bool
