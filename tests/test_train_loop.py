"""The training loop's named helpers (gptcore.train): the clock, the step accounts, the loss buffer, the evaluation
schedule, and auto's choice made on the measured warm-up step."""

import math
import time

import pytest
import torch

from gptcore import compiling
from gptcore.config import from_name
from gptcore.errors import Diverged
from gptcore.train import WARMUP_STEPS, Clock, EvalSchedule, LossBuffer, StepAccounts, train


def test_clock_books_every_interval_to_one_account():
    clock = Clock(torch.device("cpu"))
    t0 = time.perf_counter()
    time.sleep(0.01)
    first = clock.book("warmup")
    time.sleep(0.01)
    clock.book("eval")
    wall = time.perf_counter() - t0
    assert first >= 0.01 and clock.seconds["warmup"] == first and clock.seconds["eval"] >= 0.01
    assert clock.seconds["train"] == 0 and sum(clock.seconds.values()) <= wall
    assert clock.spent_stepping == clock.untimed == first


def test_step_accounts_run_the_queue_then_train():
    accounts = StepAccounts(["compile", "warmup"])
    assert [accounts.next() for _ in range(4)] == ["compile", "warmup", "train", "train"]
    assert accounts.counts == {"train": 2, "warmup": 1, "compile": 1, "eval": 0} and accounts.current == "train"


def test_loss_buffer_reads_back_every_n_and_raises_diverged_at_the_first_bad_step():
    buf = LossBuffer(every=2)
    assert buf.add(1, torch.tensor(3.0)) is None
    assert buf.add(2, torch.tensor(1.0)) == 1.0 and buf.mean_since_eval() == 2.0
    assert math.isnan(buf.mean_since_eval())  # each evaluation starts a new mean
    buf.add(3, torch.tensor(float("nan")))
    with pytest.raises(Diverged) as info:
        buf.add(4, torch.tensor(float("inf")))
    assert info.value.step == 3
    assert math.isnan(LossBuffer(5).flush())


def test_eval_schedule_by_interval_or_by_budget_fractions():
    every = EvalSchedule(5, None)
    assert [s for s in range(1, 16) if every.due(s, s / 15)] == [5, 10]  # the end (done = 1) is the loop's
    rungs = EvalSchedule(5, [0.5, 0.2, 1.0])
    assert [rungs.due(s, d) for s, d in [(1, 0.1), (2, 0.6), (3, 0.7), (4, 1.0)]] == [False, True, False, False]


def test_auto_compiles_after_measuring_the_warm_up_when_it_pays(data, monkeypatch):
    # A CPU estimate that always pays, and a "compile" that returns the model: the loop's books, not inductor.
    monkeypatch.setattr(compiling, "ESTIMATES", {("cpu", "default"): compiling.Estimate(10.0, 0.0)})
    monkeypatch.setattr(compiling, "compile_model", lambda model, mode: model)
    m, t = from_name("tiny", device="cpu", max_iters=12, eval_interval=1000)
    said = []
    monkeypatch.setattr("gptcore.train.tqdm.write", lambda line, file=None: said.append(line))
    result = train(m.with_vocab(data.vocab_size), t, data, progress=None)
    assert result.compile == "default" and result.compile_reason.startswith("auto: default")
    assert said == [f"compile: {result.compile_reason}"]
    assert result.warmup_steps == WARMUP_STEPS and result.compile_seconds > 0
    timed = 12 - WARMUP_STEPS - compiling.CAPTURE_STEPS["default"]
    assert result.tokens_per_s == pytest.approx(timed * t.batch_size * m.block_size / result.train_seconds)
