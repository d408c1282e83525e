import math

import pytest
import torch

from gptcore.config import from_name
from gptcore.errors import Diverged, UserError
from gptcore.train import lr_at, train
from tests.conftest import cuda


def configs(**overrides):
    model_cfg, train_cfg = from_name("tiny", **{"device": "cpu", **overrides})
    return model_cfg, train_cfg


def test_train_learns_and_reports(data):
    m, t = configs(max_iters=60, eval_interval=20)
    m = m.with_vocab(data.vocab_size)
    seen = []
    result = train(m, t, data, on_eval=lambda s, tr, va: seen.append((s, tr, va)), progress=False)
    assert [s for s, _, _ in seen] == [20, 40, 60] and [p.step for p in result.history] == [20, 40, 60]
    assert result.steps == 60 and result.tokens == 60 * t.batch_size * m.block_size
    assert result.val_loss < math.log(data.vocab_size)  # it learned something
    assert result.tokens_per_s > 0 and result.train_seconds > 0 and result.eval_seconds > 0
    assert result.peak_memory["peak_rss_bytes"] > 0 and result.mfu is None  # no known peak on a CPU
    assert result.n_params == result.model.num_params() and result.stopped_by == "max_iters"


def test_same_seed_same_result(data):
    m, t = configs(max_iters=20)
    m = m.with_vocab(data.vocab_size)
    a = train(m, t, data, progress=False)
    b = train(m, t, data, progress=False)
    assert a.val_loss == b.val_loss


def test_callback_stop_and_time_budget(data):
    m, t = configs(max_iters=1000, eval_interval=5)
    m = m.with_vocab(data.vocab_size)
    result = train(m, t, data, on_eval=lambda s, tr, va: "stop", progress=False)
    assert result.steps == 5 and result.stopped_by == "callback"
    m, t = configs(max_iters=None, max_seconds=0.5)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False, eval_at=[0.2, 0.6])
    assert result.stopped_by == "max_seconds" and result.train_seconds >= 0.5
    # Evaluated once the training time passed 20 % and 60 % of the budget, then at its end.
    seconds = [p.train_seconds for p in result.history]
    assert len(seconds) == 3 and 0.1 <= seconds[0] < seconds[1] < seconds[2] and seconds[1] >= 0.3
    m, t = configs(max_iters=27, eval_interval=1000)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False, eval_at=[1 / 27, 1 / 9, 1 / 3])
    assert [p.step for p in result.history] == [1, 3, 9, 27]  # rungs of a step budget


def test_divergence_raises_with_step(data):
    m, t = configs(max_iters=200, learning_rate=1e6, grad_clip=0.0)
    with pytest.raises(Diverged) as info:
        train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert 1 <= info.value.step <= 200


def test_grad_accumulation_and_bf16_autocast_on_cpu(data):
    m, t = configs(max_iters=10, grad_accum_steps=2, dtype="bfloat16")
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert result.tokens == 10 * 2 * t.batch_size * m.block_size and math.isfinite(result.val_loss)


def test_bad_dtype_or_vocab_is_a_user_error(data):
    m, t = configs(dtype="float16")
    with pytest.raises(UserError, match="float16 needs a GPU"):
        train(m.with_vocab(data.vocab_size), t, data, progress=False)
    m, t = configs()
    with pytest.raises(UserError, match="vocab_size 7"):
        train(m.with_vocab(7), t, data, progress=False)


def test_lr_schedule():
    _, t = configs(learning_rate=1.0, warmup_iters=10, lr_decay="cosine")
    assert lr_at(t, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(t, 50, 0.0) == pytest.approx(1.0)
    assert lr_at(t, 50, 1.0) == pytest.approx(0.1)
    _, w = configs(learning_rate=1.0, lr_decay="wsd")
    # Stable to 80 % of the budget, then linear to lr/10 at its end.
    assert [lr_at(w, 50, p) for p in (0.0, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 0.55, 0.1])


@cuda
def test_cuda_memory_and_mfu_fields(data):
    m, t = configs(max_iters=20, device="cuda", dtype="bfloat16")
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert result.peak_memory["peak_allocated_bytes"] > 0
    assert result.peak_memory["peak_reserved_bytes"] >= result.peak_memory["peak_allocated_bytes"]
    from gptcore import hardware as hw

    peak = hw.peak_flops(torch.device("cuda"), "bfloat16")
    if peak is None:  # a GPU missing from the table has no MFU, and says so with None
        assert result.mfu is None
    else:
        assert 0 < result.mfu < 1


def test_mfu_is_model_flops_times_rate_over_peak(data, monkeypatch):
    """With a known peak, MFU = flops per token x timed tokens/s / peak."""
    monkeypatch.setattr("gptcore.train.hw.peak_flops", lambda device, dtype: 1e12)
    m, t = configs(max_iters=12)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)
    expected = result.model.flops_per_token(m.block_size) * result.tokens_per_s / 1e12
    assert result.mfu == pytest.approx(expected) and result.mfu > 0


def test_warmup_steps_are_outside_the_budget_and_the_rate(data):
    """The first WARMUP_STEPS steps train but are timed apart: tokens/s counts only the later steps."""
    from gptcore.train import WARMUP_STEPS

    m, t = configs(max_iters=10, eval_interval=1000)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert result.steps == 10 and result.warmup_steps == WARMUP_STEPS and result.warmup_seconds > 0
    timed_tokens = (10 - WARMUP_STEPS) * t.batch_size * m.block_size
    assert result.tokens_per_s == pytest.approx(timed_tokens / result.train_seconds)
    m, t = configs(max_iters=None, max_seconds=0.3)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)
    # A time budget starts after the warm-up: the timed seconds alone reach it.
    assert result.train_seconds >= 0.3 and result.warmup_steps == WARMUP_STEPS


def test_every_second_is_counted_once(data):
    """Training, warm-up and evaluation time add up to at most the wall time of the call, even when pruned."""
    import time

    m, t = configs(max_iters=1000, eval_interval=7)
    calls = []

    def prune_at_third(step, tr, va):
        calls.append(step)
        if len(calls) == 3:
            time.sleep(0.2)  # a slow prune decision is evaluation overhead, never training time
            return "stop"
        return None

    t0 = time.perf_counter()
    result = train(m.with_vocab(data.vocab_size), t, data, on_eval=prune_at_third, progress=False)
    wall = time.perf_counter() - t0
    assert result.stopped_by == "callback" and result.steps == 21
    assert result.eval_seconds >= 0.2
    assert result.train_seconds + result.warmup_seconds + result.compile_seconds + result.eval_seconds <= wall


def test_interrupt_stops_at_a_step_boundary_without_a_final_evaluation(data):
    import threading

    stop = threading.Event()
    m, t = configs(max_iters=1000, eval_interval=5)

    def set_at_ten(step, tr, va):
        if step == 10:
            stop.set()

    result = train(m.with_vocab(data.vocab_size), t, data, on_eval=set_at_ten, progress=False, interrupt=stop)
    assert result.stopped_by == "interrupted" and result.steps == 10
    assert [p.step for p in result.history] == [5, 10]  # nothing evaluated after the interrupt


def test_evaluation_in_chunks_gives_the_same_loss(data):
    """A fixed eval set of 32 windows, evaluated in chunks of the training batch, has the same mean loss."""
    from gptcore.model import GPT
    from gptcore.train import estimate_loss

    m, t = configs(eval_batch_size=32, eval_iters=2)
    torch.manual_seed(0)
    model = GPT(m.with_vocab(data.vocab_size))
    chunked = estimate_loss(model, data, t, m.block_size, torch.device("cpu"))  # batch_size 4: 8 chunks
    whole = estimate_loss(model, data, type(t)(**{**t.__dict__, "batch_size": 32}), m.block_size,
                          torch.device("cpu"))
    assert chunked["val"] == pytest.approx(whole["val"], rel=1e-5)
    assert chunked["train"] == pytest.approx(whole["train"], rel=1e-5)


def test_result_to_dict_is_plain_data_and_copies_no_model(data, monkeypatch):
    m, t = configs(max_iters=5)
    result = train(m.with_vocab(data.vocab_size), t, data, progress=False)

    import copy

    real_deepcopy = copy.deepcopy

    def guarded(obj, *args, **kwargs):
        assert not isinstance(obj, (torch.nn.Module, torch.optim.Optimizer, torch.Tensor)), "deep-copied the model"
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr("copy.deepcopy", guarded)
    d = result.to_dict()
    assert "model" not in d and "optimizer" not in d and d["history"][-1]["step"] == 5
    assert isinstance(d["peak_memory"]["peak_rss_bytes"], int) and d["val_loss"] == result.val_loss
