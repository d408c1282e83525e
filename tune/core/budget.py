"""The training the user means to run (the target budget) and the rungs a study judges trials at on the way.

A study answers "which configuration is best after *this much* training?". Short budgets favour tiny, fast
models with large learning rates (the short-horizon bias): measured here, the winner of a 30-second study lost to
the `baby` preset once both trained for 2 minutes (val 1.814 vs 1.561). So every trial trains towards the full
target with the learning-rate schedule of the full run, and is judged at rungs that grow geometrically up to it
(target/27, /9, /3, 1 with a reduction factor of 3): only the best third at each rung trains on (asynchronous
successive halving), so a few trials reach the target and the many weak ones stop early.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gptcore.errors import UserError

# Defaults per device: what a newcomer's first run is likely to be. A 50-trial study costs at least ~8 target
# budgets with the references (RungPlan.cost) and up to ~3x that when the sampler keeps improving (measured: a
# 30-trial 2-minute study on a 2-core CPU took 33 min). Pass the budget you will really train for.
DEFAULT_BUDGET = {"cpu": "2m", "cuda": "10m", "mps": "5m"}
# A rung shorter than this measures start-up noise more than learning. At 1.33 s the loss already ranks trials as
# the target does (Spearman 0.94 against a 12 s target over 200 trials, 0.91 against 36 s over 100: the replay's
# tables); a 12 s target then gets 3 rungs instead of 2, which the replay measured at 5 target budgets less per
# 20-trial study for the same answer (docs/tuner-strategies.md, "Half the time").
MIN_RUNG_SECONDS = 1.0
MIN_RUNG_STEPS = 50
MAX_RUNGS = 4
# --schedule -> TrainConfig.lr_decay, always against the target budget (see gptcore.train.lr_at).
SCHEDULES = {"constant": "none", "cosine": "cosine", "wsd": "wsd"}
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)")


@dataclass(frozen=True)
class Budget:
    """A training budget: `amount` seconds of timed training, or `amount` optimizer steps."""

    amount: float
    unit: str  # "s" or "steps"

    def __post_init__(self) -> None:
        if self.unit not in ("s", "steps"):
            raise UserError(f"--budget unit must be seconds or steps, got {self.unit!r}")
        if not (math.isfinite(self.amount) and self.amount > 0):
            raise UserError(f"--budget must be a positive amount, got {self.amount!r}")
        if self.unit == "steps" and self.amount != int(self.amount):
            raise UserError(f"--budget in steps must be a whole number, got {self.amount!r}")

    @property
    def seconds(self) -> float | None:
        """Timed training seconds, for a time budget."""
        return self.amount if self.unit == "s" else None

    @property
    def steps(self) -> int | None:
        """Optimizer steps, for a step budget."""
        return int(self.amount) if self.unit == "steps" else None

    def train_fields(self) -> dict[str, float | int | None]:
        """The TrainConfig budget fields: max_seconds for a time budget, max_iters for a step budget."""
        return {"max_iters": self.steps, "max_seconds": self.seconds}

    def __str__(self) -> str:
        if self.unit == "steps":
            return f"{int(self.amount)} steps"
        return format_seconds(self.amount)


def schedule_fields(schedule: str) -> dict[str, str | int]:
    """The TrainConfig schedule fields of --schedule, the same in every trial and in best.json."""
    return {"lr_decay": SCHEDULES[schedule], "warmup_iters": 0}


def format_seconds(seconds: float) -> str:
    """90 -> '1 min 30 s', 7200 -> '2 h', 4.44 -> '4.4 s'."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return " ".join(f"{v} {u}" for v, u in ((h, "h"), (m, "min"), (s, "s")) if v)


def parse_budget(text: str) -> Budget:
    """'2m', '90s', '1h30m', '45' (seconds), '5000steps' -> Budget; one-line UserError otherwise."""
    t = text.strip().lower().replace(" ", "")
    if t.endswith("steps") or t.endswith("step"):
        number = t.removesuffix("steps").removesuffix("step")
        if not number.isdigit() or int(number) == 0:
            raise UserError(f"--budget {text!r}: expected a positive whole number of steps, e.g. 5000steps")
        return Budget(int(number), "steps")
    try:
        return Budget(float(t), "s")  # a bare number is seconds
    except ValueError:
        pass
    parts = _PART.findall(t)
    if not parts or "".join(a + u for a, u in parts) != t:
        raise UserError(f"--budget {text!r}: expected a duration such as 90s, 2m, 1h30m, or steps such as 5000steps")
    return Budget(sum(float(a) * _UNITS[u] for a, u in parts), "s")


@dataclass(frozen=True)
class RungPlan:
    """Evaluation points as fractions of the target: eta**-(n-1), ..., 1/eta, 1. Report k is at step eta**k."""

    fractions: tuple[float, ...]
    eta: int

    @classmethod
    def for_budget(cls, budget: Budget, eta: int = 3, rungs: int | None = None) -> RungPlan:
        """Up to MAX_RUNGS rungs, the smallest no shorter than MIN_RUNG_SECONDS (or MIN_RUNG_STEPS)."""
        if eta < 2:
            raise UserError(f"--reduction-factor must be at least 2, got {eta}")
        if rungs is None:
            smallest = MIN_RUNG_SECONDS if budget.unit == "s" else MIN_RUNG_STEPS
            rungs = 1
            while rungs < MAX_RUNGS and budget.amount / eta**rungs >= smallest:
                rungs += 1
        if rungs < 1:
            raise UserError(f"--rungs must be at least 1, got {rungs}")
        return cls(tuple(eta ** -(rungs - 1 - k) for k in range(rungs)), eta)

    @property
    def steps(self) -> tuple[int, ...]:
        """Optuna report steps of the rungs: 1, eta, eta**2, ... (the pruner's resource units)."""
        return tuple(self.eta**k for k in range(len(self.fractions)))

    def reach(self, trials: int) -> list[float]:
        """Trials expected to reach each rung when the best 1/eta of each rung trains on (the floor).

        Never fewer than one while there are trials: the first trial to reach a rung is promoted from it (it is
        the best there so far; Optuna's asynchronous halving cannot pause it until others catch up).
        """
        return [min(trials, max(1.0, trials / self.eta**k)) for k in range(len(self.fractions))]

    def cost(self, trials: int) -> float:
        """Expected training, in target budgets, of `trials` trials under successive halving."""
        reach = self.reach(trials)
        total, done = 0.0, 0.0
        for frac, n in zip(self.fractions, reach):
            total += n * (frac - done)
            done = frac
        return total

    def describe(self, budget: Budget) -> str:
        """'4.44 s, 13.3 s, 40 s, 2 min' (or steps)."""
        if budget.unit == "steps":
            return ", ".join(f"{max(1, round(f * budget.amount))} steps" for f in self.fractions)
        return ", ".join(format_seconds(f * budget.amount) for f in self.fractions)
