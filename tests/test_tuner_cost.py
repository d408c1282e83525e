"""#22.1: the replayed study charged as the real one is (references first, confirmation runs last, re-run noise),
judged by the answer it would name at each moment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.tuner_cost import Answers, Spend, replay_answers
from benchmarks.tuner_replay import DEFAULT, cost_to, replay
from benchmarks.tuner_table import DEFAULT_TABLE, load_table
from tune.core.confirm import CONFIRM_RUNS

TRIALS = 12


@pytest.fixture(scope="module")
def table():
    return load_table(DEFAULT_TABLE)


def test_without_noise_references_or_confirmation_it_is_the_plain_replay(table):
    for seed in range(3):
        plain = replay(table, DEFAULT, seed, TRIALS)
        answers = replay_answers(table, DEFAULT, seed, TRIALS, Spend(references=0, confirm=0, noise=0.0))
        assert answers.end == pytest.approx(plain.clock[-1])
        assert answers.regret[-1] == pytest.approx(plain.best[-1] - table.best)
        # The answer changes exactly when the plain replay's best does.
        changes = plain.clock[np.r_[True, np.diff(plain.best) < 0] & np.isfinite(plain.best)]
        assert answers.clock == pytest.approx(changes)


def test_references_are_charged_first_and_confirmation_runs_last(table):
    base = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=0, confirm=0, noise=0.0))
    refs = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=2, confirm=0, noise=0.0,
                                                           references_last=False))
    ok = table.frame.loc[table.frame["status"] == "ok", "trial_seconds"]
    assert refs.end - base.end == pytest.approx(2 * float(ok.median()))
    assert refs.clock[0] - base.clock[0] == pytest.approx(2 * float(ok.median()))  # the first answer comes later
    confirmed = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=0, confirm=1, noise=0.0, sequential=False))
    # The best configuration the search found runs CONFIRM_RUNS more times to the target after the search.
    best_loss = table.best + base.regret[-1]
    (best,) = [row for row in table.rows if float(row["val_loss"]) == pytest.approx(best_loss, abs=1e-9)][:1]
    extra = CONFIRM_RUNS * cost_to(best, len(table.fractions), 1.0, 1)
    assert confirmed.end - base.end == pytest.approx(extra)
    assert confirmed.clock[-1] == pytest.approx(confirmed.end)  # the confirmed answer is named when they end
    assert confirmed.regret[-1] == pytest.approx(base.regret[-1])  # without noise the mean is the single run


def test_the_answer_at_a_moment_and_when_it_came_within_noise():
    a = Answers(clock=np.array([10.0, 30.0, 50.0]), regret=np.array([0.5, 0.02, 0.1]), end=60.0)
    assert math.isinf(a.at(5.0)) and a.at(10.0) == 0.5 and a.at(45.0) == 0.02 and a.at(99.0) == 0.1
    assert a.first_within(0.03) == 30.0 and math.isinf(a.first_within(0.01))


def test_noise_can_make_the_named_answer_worse_than_the_one_without(table):
    quiet = [replay_answers(table, DEFAULT, s, TRIALS, Spend(0, 0, 0.0)).regret[-1] for s in range(8)]
    noisy = [replay_answers(table, DEFAULT, s, TRIALS, Spend(0, 0, 0.2)).regret[-1] for s in range(8)]
    assert noisy != quiet and all(r >= 0 for r in noisy)


def test_the_cost_command_prints_and_writes_its_table(tmp_path, capsys):
    assert main(["tuner", "cost", "--seeds", "2", "--trials", "6", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "regret@8b" in out and "before #22" in out and "the default" in out
    assert (tmp_path / "tuner_cost.csv").is_file() and "# The answer's cost" in (tmp_path / "tuner_cost.md").read_text()


def test_references_run_last_cost_at_most_their_whole_runs_and_never_delay_the_first_answer(table):
    base = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=0, confirm=0, noise=0.0))
    first = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=2, confirm=0, noise=0.0, references_last=False))
    last = replay_answers(table, DEFAULT, 0, TRIALS, Spend(references=2, confirm=0, noise=0.0))
    assert last.clock[0] == pytest.approx(base.clock[0]) and base.clock[0] < first.clock[0]
    assert base.end < last.end <= first.end + 1e-9  # judged at their rungs: a reference may stop early


def test_sequential_confirmation_spends_at_most_what_confirming_every_run_does(table):
    for seed in range(6):
        every = replay_answers(table, DEFAULT, seed, TRIALS, Spend(references=0, confirm=2, sequential=False))
        seq = replay_answers(table, DEFAULT, seed, TRIALS, Spend(references=0, confirm=2))
        base = replay_answers(table, DEFAULT, seed, TRIALS, Spend(references=0, confirm=0))
        assert base.end < seq.end <= every.end + 1e-9  # the best is always confirmed once
