"""The target budget and the rung plan a study judges trials at."""

import pytest

from gptcore.errors import UserError
from tune.core.budget import MAX_RUNGS, MIN_RUNG_SECONDS, Budget, RungPlan, format_seconds, parse_budget


@pytest.mark.parametrize("text, budget", [
    ("2m", Budget(120, "s")), ("90s", Budget(90, "s")), ("1h30m", Budget(5400, "s")), ("45", Budget(45, "s")),
    ("2.5min", Budget(150, "s")), ("5000steps", Budget(5000, "steps")), (" 10 m ", Budget(600, "s")),
])
def test_parse_budget(text, budget):
    assert parse_budget(text) == budget


@pytest.mark.parametrize("text", ["", "m", "2x", "-5m", "0", "nan", "inf", "0steps", "1.5steps", "2m3", "abc"])
def test_bad_budgets_name_the_flag(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text)


def test_rungs_grow_by_the_reduction_factor_up_to_the_target():
    plan = RungPlan.for_budget(Budget(120, "s"))
    assert plan.fractions == pytest.approx((1 / 27, 1 / 9, 1 / 3, 1.0)) and plan.steps == (1, 3, 9, 27)
    assert plan.describe(Budget(120, "s")) == "4.44 s, 13.3 s, 40 s, 2 min"
    # The smallest rung is never shorter than MIN_RUNG_SECONDS (or 50 steps): shorter targets get fewer rungs.
    for seconds in (1.5, 2, 5, 12, 30, 60):
        plan = RungPlan.for_budget(Budget(seconds, "s"))
        assert plan.fractions[0] * seconds >= MIN_RUNG_SECONDS or len(plan.fractions) == 1
        assert len(plan.fractions) == MAX_RUNGS or plan.fractions[0] * seconds / 3 < MIN_RUNG_SECONDS
    assert len(RungPlan.for_budget(Budget(12, "s")).fractions) == 3  # the replay's target: rungs 1.33, 4, 12 s
    assert len(RungPlan.for_budget(Budget(500, "steps")).fractions) == 3
    assert RungPlan.for_budget(Budget(2, "s"), eta=2, rungs=3).fractions == (0.25, 0.5, 1.0)


def test_cost_and_reach_follow_successive_halving():
    plan = RungPlan.for_budget(Budget(120, "s"))
    assert plan.reach(27) == [27, 9, 3, 1]
    # 27 trials x 1/27 + 9 x (1/9 - 1/27) + 3 x (1/3 - 1/9) + 1 x (1 - 1/3) = 3 target budgets
    assert plan.cost(27) == pytest.approx(3.0)
    assert RungPlan((1.0,), 3).cost(5) == 5
    # The first trial at a rung is always promoted: a short study still trains one trial to the target.
    assert plan.reach(6)[-1] == 1 and plan.cost(6) >= 1


def test_format_seconds():
    assert [format_seconds(v) for v in (4.444, 90, 7200, 3725)] == ["4.44 s", "1 min 30 s", "2 h", "1 h 2 min 5 s"]
