"""The learning-curve prediction as the reports show it: where a run was stopped before the target, what its loss
at the target was predicted to be (the search records it: tune.search.predict), and how far the predictions of the
runs that then reached the target were off."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tune.core import schema, units
from tune.core.budget import Budget, RungPlan
from tune.core.outcomes import Status
from tune.report.frame import source_of

# How wide a prediction interval the error is checked against, in predicted sd: +-2 sd holds about 95% of the
# runs when the line's errors are normal, so many more misses than 1 in 20 say the sd is too small.
INTERVAL_Z = 2


def has_prediction(row: pd.Series) -> bool:
    """Whether the search predicted this run's loss at the target at a rung."""
    return not units.missing(row.get("predicted_loss"))


def stopped_by_prediction(row: pd.Series) -> bool:
    """A run stopped at a rung because its predicted loss at the target could not beat the best so far."""
    return row.get("status") == Status.PRUNED and row.get("stopped_by") == schema.PREDICTION


def _whole(value: Any) -> int | None:
    """A count or a rung from the record (None when missing)."""
    return None if units.missing(value) else int(value)


def rung_budget(settings: dict[str, Any], rung: int) -> str | None:
    """The training budget at rung `rung` (1-based), as the plan prints it ('1.33 s', '200 steps'); None unknown."""
    fractions, amount = settings.get("rungs") or [], settings.get("budget_amount")
    if not 1 <= rung <= len(fractions) or units.missing(amount):
        return None
    budget = Budget(float(amount), settings.get("budget_unit", "s"))
    return RungPlan((fractions[rung - 1],), 2).describe(budget)  # one rung: its own rounding, the plan's


def stopped_text(row: pd.Series, settings: dict[str, Any]) -> str:
    """'stopped at rung 1 of 3 (1.33 s) by the prediction, loss 2.4100': where a run stopped and its loss there."""
    rung = _whole(row.get("rung")) or _whole(row.get("predicted_rung"))
    rungs = _whole(row.get("rungs")) or len(settings.get("rungs") or [])
    where = "before the target" if rung is None else f"at rung {rung}" + (f" of {rungs}" if rungs else "")
    budget = rung_budget(settings, rung) if rung is not None else None
    why = {schema.PREDICTION: " by the prediction", schema.HALVING: " by successive halving"}.get(
        row.get("stopped_by"), "")
    # A pruned run's val_loss is its last evaluation's, at the rung: rung_loss names it; older records lack it.
    loss = row.get("rung_loss") if not units.missing(row.get("rung_loss")) else row.get("val_loss")
    return (f"stopped {where}{f' ({budget})' if budget else ''}{why}"
            + (f", loss {units.LOSS.text(loss)}" if not units.missing(loss) else ""))


def predicted_text(row: pd.Series) -> str:
    """'predicted 2.1000 ± 0.0400 at the target' ('' when the run carries no prediction)."""
    if not has_prediction(row):
        return ""
    sd = row.get("predicted_sd")
    return (f"predicted {units.LOSS.text(row['predicted_loss'])}"
            f"{'' if units.missing(sd) else f' ± {units.LOSS.text(sd)}'} at the target")


def judged_text(row: pd.Series, settings: dict[str, Any], answer: float | None) -> str:
    """A run stopped at a rung as every report shows it: 'stopped at rung 1 of 3 (1.33 s) by the prediction, loss
    2.4100; predicted 2.1000 ± 0.0400 at the target, the answer 1.9000' (`answer`: the study's figure, or None)."""
    predicted = predicted_text(row)
    out = stopped_text(row, settings) + (f"; {predicted}" if predicted else "")
    return out + (f", the answer {units.LOSS.text(answer)}" if predicted and not units.missing(answer) else "")


def verdict_at_rung(row: pd.Series, settings: dict[str, Any], answer: float | None, by_loss: bool) -> str:
    """A run stopped at a rung against the study's answer (None: no run trained to the target yet; `by_loss`: the
    study ranks the loss): where it stopped, its prediction, and a verdict that says it is predicted, not measured."""
    text = judged_text(row, settings, answer if by_loss else None)
    if not has_prediction(row) or answer is None:
        return f"{text}: it did not train to the target, so it is not compared"
    if not by_loss:  # the prediction is of the loss: against a throughput answer it says nothing
        return f"{text} (its loss; the study ranks throughput): it did not train to the target, so it is not compared"
    predicted = float(row["predicted_loss"])
    if predicted > answer:
        return (f"{text}: predicted, not measured, to lose to the answer by {units.LOSS.text(predicted - answer)} "
                f"({units.ERROR.text((predicted - answer) / abs(predicted))}); it did not train to the target")
    then = row.get("incumbent_loss")
    against = ("" if units.missing(then)
               else f" (the best loss at the target when it was stopped: {units.LOSS.text(then)})")
    return f"{text}: predicted, not measured, to be no worse than the answer{against}; it did not train to the target"


def prediction_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that reached the target after a prediction: their name ('trial 12', 'ref baby'), predicted loss
    and sd, val_loss, the error (val_loss - predicted_loss) and whether it fell within +-INTERVAL_Z sd."""
    done = runs[(runs["status"] == Status.OK) & runs["predicted_loss"].notna() & runs["val_loss"].notna()]
    predicted = pd.to_numeric(done["predicted_loss"], errors="coerce")
    sd = pd.to_numeric(done["predicted_sd"], errors="coerce")
    error = pd.to_numeric(done["val_loss"], errors="coerce") - predicted
    return pd.DataFrame({"run": [source_of(r) for _, r in done.iterrows()], "predicted": predicted, "sd": sd,
                         "val_loss": done["val_loss"], "error": error,
                         "within": error.abs() <= INTERVAL_Z * sd}, index=done.index)


def stop_counts(search: pd.DataFrame) -> dict[str, int]:
    """The searched trials stopped at a rung, by why: halving, prediction, and unrecorded (a record without it)."""
    pruned = search[search["status"] == Status.PRUNED]
    why = pruned["stopped_by"].where(pruned["stopped_by"].isin([schema.HALVING, schema.PREDICTION]), "unrecorded")
    counts = why.value_counts()
    return {k: int(counts.get(k, 0)) for k in (schema.HALVING, schema.PREDICTION, "unrecorded")}
