"""The units reports show, defined once: each figure's scale from the record's SI value, its rounding and its name.

The trial record keeps SI units (bytes, seconds, tokens/s); summary.md, the card, compare.md, the memory report and
the benchmarks' tables turn them into text here and nowhere else, so a figure reads the same in every report (a
loss is never 2.477 in one place and 2.4766 in another). trials.csv keeps more digits (tune.core.schema): it is
data, not text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unit:
    """A figure as a person reads it: SI value / scale, rounded to `digits`, followed by `name`."""

    name: str  # what follows the number ("MiB"); "" for a bare figure (a loss)
    scale: float  # the SI value / scale = the shown value (bytes / 2**20 = MiB)
    digits: int  # decimals shown; for style "s", significant digits
    # "f": fixed point with thousands separators; "s": `digits` significant digits, never an exponent (a figure
    # that spans decades: 0.213, 75.6, 1,234); "e": exponent (a learning rate); "%": percent.
    style: str = "f"

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.digits < 0 or self.style not in ("f", "s", "e", "%"):
            raise ValueError(f"unit {self.name!r}: scale {self.scale} must be > 0, digits {self.digits} >= 0 and "
                             f"style {self.style!r} one of f, s, e, %")

    def value(self, si: Any) -> float | None:
        """The shown value as a number, rounded as the text shows it (None when missing): for tables' cells."""
        if missing(si):
            return None
        x = float(si) / self.scale
        return x if self.style == "e" else round(x, self._decimals(x) + (2 if self.style == "%" else 0))

    def _decimals(self, x: float) -> int:
        """Decimals shown of the scaled value `x`."""
        if self.style != "s":
            return self.digits
        return max(0, self.digits - 1 - math.floor(math.log10(abs(x)))) if x and math.isfinite(x) else 0

    def text(self, si: Any, unit: bool = False, sign: bool = False) -> str:
        """The figure as text ('-' when missing); with unit=True, followed by its unit; sign=True: '+' or '-'."""
        if missing(si):
            return "-"
        x = float(si) / self.scale
        spec = ("+" if sign else "") + {"f": f",.{self.digits}f", "s": f",.{self._decimals(x)}f",
                                        "e": f".{self.digits}e", "%": f".{self.digits}%"}[self.style]
        out = f"{x:{spec}}"
        return f"{out} {self.name}" if unit and self.name else out


def missing(value: Any) -> bool:
    """Whether a figure is absent: None, NaN, pandas' NA, or not a number at all (a bool is not a figure)."""
    if value is None or isinstance(value, bool):
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


MiB = 2**20
GiB = 2**30

MIB = Unit("MiB", MiB, 0)  # memory in tables and prose: whole MiB
GIB = Unit("GiB", GiB, 1)  # a device's memory
LOSS = Unit("", 1, 4)  # a loss (and a difference of losses): 4 decimals everywhere
KTOK = Unit("k tokens/s", 1e3, 3, "s")  # training throughput: from a CPU's 0.213 to a GPU's 1,234
PARAMS = Unit("M params", 1e6, 2)  # model size
RATIO = Unit("x", 1, 3, "s")  # a speed-up: 0.0213x, 1.23x, 45.6x
SECONDS = Unit("s", 1, 1)  # a duration
LR = Unit("", 1, 2, "e")  # a learning rate: 2.00e-03
GFLOPS = Unit("GFLOP/s", 1, 1)  # a matmul rate (the benchmarks record GFLOP/s)
MS = Unit("ms", 1, 4)  # a benchmark's wall time per call (the benchmarks record ms)
SHARE = Unit("", 1, 0, "%")  # a share of a whole (of the peak, of the CPU): 42%
ERROR = Unit("", 1, 1, "%")  # a relative error: 12.3%
EPOCHS = Unit("epochs", 1, 1)  # passes over the corpus
WHOLE = Unit("", 1, 0)  # a count, a batch size
TOKENS_PER_S = Unit("tokens/s", 1, 0)  # throughput in prose, where it is the objective

# The record's figures (tune.core.schema's names) that reports write in prose, by name: a figure named by a
# variable (the objective's column) is shown by its own unit.
FIGURES: dict[str, Unit] = {
    "val_loss": LOSS, "rung_loss": LOSS, "train_loss": LOSS, "objective_value": LOSS,
    "tokens_per_s": TOKENS_PER_S, "peak_memory_bytes": MIB, "predicted_peak_bytes": MIB, "n_params": PARAMS,
    "trial_seconds": SECONDS, "learning_rate": LR, "epochs": EPOCHS,
}


def figure(name: str, value: Any) -> str:
    """A record figure as text in its own unit's rounding (no unit name): figure('val_loss', 2.47663) -> '2.4766'."""
    if name not in FIGURES:
        raise KeyError(f"figure {name!r}: no unit for it; expected one of {', '.join(sorted(FIGURES))}")
    return FIGURES[name].text(value)
