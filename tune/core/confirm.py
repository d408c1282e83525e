"""Confirmation runs: how many each confirmed configuration gets, and how the tables, the console and the files name
them (and every other run).

The search side claims them (tune.search.dispatch); the report side shows them (tune.report.frame).
"""

from __future__ import annotations

import math

CONFIRM_RUNS = 2  # each confirmed configuration trains at most this many more times, with seeds --seed + 1, + 2
# --confirm-rule: "sequential" stops confirming once the answer is settled (next_confirmation);
# "all" runs every confirmation run of the K best (the rule before; a study recorded without a rule keeps it).
CONFIRM_RULES = ("sequential", "all")


def confirm_rule(settings: dict) -> str:
    """The rule a study's stored settings confirm by: sequential on the loss only (its noise prior is a loss's);
    "all" for another objective, and for a study recorded before the rule existed."""
    sequential = settings.get("confirm_rule", "all") == "sequential" and settings.get("objective", "loss") == "loss"
    return "sequential" if sequential else "all"


def source_name(number: int | None, preset: str | None) -> str:
    """How a confirmation run names the configuration it repeats (user attr `confirm_of`): 'trial 12', 'ref baby'."""
    return f"ref {preset}" if preset else f"trial {number}"


def run_stem(number: int | None, preset: str | None) -> str:
    """The file name a run's log, curve and checkpoint folder share: 'trial_0012', 'ref_baby' (a confirmation run
    adds '_1', '_2' to its configuration's)."""
    return f"ref_{preset}" if preset else f"trial_{number:04d}"


def confirm_label(confirm_of: str, run: int | None) -> str:
    """A confirmation run in the tables and on the console: 'confirm trial 12 #1'."""
    return f"confirm {confirm_of} #{run if run is not None else '?'}"


# Sequential confirmation: the noise a study assumes before it measured its own, as PRIOR_DOF pseudo-runs' worth
# of evidence (a single confirmation pair is one degree of freedom: alone it may say the noise is almost zero).
# 0.030: the run-to-run sd of the validation loss measured with --confirm 2 in 9 real 20-trial studies (12 s
# target, 2-core CPU); a study's own runs outweigh it after a few confirmations.
PRIOR_NOISE = 0.030
PRIOR_DOF = 2
# Confirmation stops once naming the leader can cost little: the runner-up may truly be better, and SETTLED bounds
# by how much on average (the expected loss of the choice, given both means and the noise). A lead of 2 standard
# errors is settled, and so are two configurations so close that either is as good an answer.
SETTLED = 0.01


def pooled_noise(runs: dict[object, list[float]]) -> float:
    """The run-to-run sd: every configuration's repeated runs pooled, with the prior's pseudo-runs."""
    ss = sum(sum((x - sum(v) / len(v)) ** 2 for x in v) for v in runs.values() if len(v) > 1)
    dof = sum(len(v) - 1 for v in runs.values())
    return ((PRIOR_DOF * PRIOR_NOISE**2 + ss) / (PRIOR_DOF + dof)) ** 0.5


def choice_loss(lead: float, se: float) -> float:
    """How much better the runner-up is, on average, than the leader named: E[max(0, -d)] for a true difference
    d ~ N(lead, se^2) (the normal loss function)."""
    if se <= 0:
        return max(0.0, -lead)
    u = lead / se
    return se * math.exp(-u * u / 2) / math.sqrt(2 * math.pi) - lead * 0.5 * math.erfc(u / math.sqrt(2))


def next_confirmation(runs: dict[object, list[float]], confirmed: dict[object, int], cap: int) -> object | None:
    """Which configuration to confirm next, or None: naming the leader costs less than SETTLED, or the cap is spent.

    runs: every run's loss at the target per configuration (its search run first); confirmed: confirmation runs
    made of each configuration so far (its keys are the candidates, best first); cap: confirmation runs allowed
    per configuration. The best mean is confirmed once before anything is judged (that run measures the noise)."""
    mean = {p: sum(runs[p]) / len(runs[p]) for p in confirmed}
    order = sorted(confirmed, key=mean.__getitem__)
    if not order:
        return None
    top = order[0]
    if confirmed[top] == 0:
        return top
    if len(order) == 1:  # nothing it could lose to: the one run measured the noise
        return None
    second = order[1]
    se = pooled_noise(runs) * (1 / len(runs[top]) + 1 / len(runs[second])) ** 0.5
    if choice_loss(mean[second] - mean[top], se) < SETTLED:
        return None
    pick = min((top, second), key=lambda p: confirmed[p])  # the one the comparison knows less of
    return pick if confirmed[pick] < cap else None
