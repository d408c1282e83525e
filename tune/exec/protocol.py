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


@dataclass
class TrialJob:
    """What a trial process is given: its configs and data, where it runs and writes, and how it ends.

    Plain values only (it is pickled to the trial process). The tuner (tune.search.study.job_for), max-batch
    (tune.memory.maxbatch) and tests build it; TrialRunner.run fills the last three in."""

    model: dict[str, Any]  # gptcore.config.ModelConfig fields
    train: dict[str, Any]  # gptcore.config.TrainConfig fields
    data: str  # the prepared-data folder
    device: str  # the tuner's --device (a trial with its own GPU sees it as cuda:0)
    log: str  # the trial's log file: its stdout and stderr
    memory_limit: int | None = None  # bytes the step may hold (tune.memory.judge)
    eval_at: list[float] | None = None  # the rungs below the target, as shares of the budget (None: eval_interval)
    checkpoint: str | None = None  # where to keep the trained model (None: not kept)
    cores: list[int] | None = None  # pinned to these (None: unpinned)
    gpu: int | None = None  # its own GPU, by index (None: the device as given)
    compile_cache: str | None = None  # torch.compile's cache, one per study
    target: str = "gptcore.train:train"  # module:function that trains (tests substitute stand-ins)
    tuner_pid: int | None = None  # the trial ends itself when this process dies (tune.exec.worker.guard)
    deadline_s: float | None = None  # ... and after this many seconds
    predict: bool = False  # trace the step and ask (Predicted) before training


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
