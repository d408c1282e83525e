"""Compiled training steps train like eager ones: torch.compile on the CPU, CUDA graphs on a GPU (marked cuda)."""

import math

import pytest
import torch

from gptcore import compiling
from gptcore.config import TrainConfig, from_dict, from_name
from gptcore.errors import Diverged, UserError
from gptcore.train import WARMUP_STEPS, lr_at, train
from tests.conftest import cuda

STEPS = 24


def run(data, **overrides):
    """A tiny run with a schedule that moves (warm-up, then cosine) and clipping that bites."""
    settings = dict(device="cpu", max_iters=STEPS, eval_interval=8, warmup_iters=4, lr_decay="cosine",
                    grad_clip=0.5, learning_rate=3e-3, dropout=0.0, **overrides)
    m, t = from_name("tiny", **settings)
    return train(m.with_vocab(data.vocab_size), t, data, progress=False)


@pytest.fixture(scope="module")
def eager_and_compiled(data):
    """One eager and one torch.compile'd run of the same seed: compiling on the CPU takes seconds, so once."""
    return run(data, compile="none"), run(data, compile="default")


@pytest.mark.slow
def test_compiled_run_trains_to_the_eager_losses(eager_and_compiled):
    eager, compiled = eager_and_compiled
    assert compiled.compile == "default" and eager.compile == "none"
    assert [p.step for p in compiled.history] == [p.step for p in eager.history] == [8, 16, 24]
    # Same seed, same batches, same schedule and clipping: only the kernels' float rounding differs.
    for a, b in zip(eager.history, compiled.history):
        assert b.val_loss == pytest.approx(a.val_loss, abs=2e-3) and b.train_loss == pytest.approx(a.train_loss,
                                                                                                   abs=2e-3)
    assert compiled.history[-1].val_loss < compiled.history[0].val_loss  # and it learned


@pytest.mark.slow
def test_compile_time_is_booked_apart_from_the_budget_and_the_rate(eager_and_compiled):
    eager, compiled = eager_and_compiled
    assert eager.compile_seconds == 0 and compiled.compile_seconds > 0
    assert compiled.warmup_steps == WARMUP_STEPS and compiled.steps == STEPS
    # The first step compiled: it is neither warm-up nor timed training, so tokens/s counts the rest only.
    timed = STEPS - WARMUP_STEPS - compiling.CAPTURE_STEPS["default"]
    tokens_per_step = compiled.tokens // compiled.steps
    assert compiled.tokens_per_s == pytest.approx(timed * tokens_per_step / compiled.train_seconds)
    assert compiled.compile_seconds > compiled.train_seconds / timed  # compiling took longer than a step


@pytest.mark.slow
def test_lr_schedule_moves_under_compile(eager_and_compiled):
    _, compiled = eager_and_compiled
    # The schedule's last value was set into AdamW's groups (a Python float, read by the eager optimizer).
    _, t = from_name("tiny", max_iters=STEPS, warmup_iters=4, lr_decay="cosine", learning_rate=3e-3)
    last = lr_at(t, STEPS - 1, (STEPS - 1) / STEPS)
    assert all(g["lr"] == pytest.approx(last) for g in compiled.optimizer.param_groups)
    assert last != pytest.approx(lr_at(t, 0, 0.0)) and last != pytest.approx(t.learning_rate)


@pytest.mark.slow
def test_dropout_still_drops_in_a_compiled_model(data):
    m, _ = from_name("tiny", dropout=0.5, n_layer=1)  # one block: the least to compile
    torch.manual_seed(0)
    from gptcore.model import build_model

    model = build_model(m.with_vocab(data.vocab_size))
    compiled = compiling.compile_model(model, "default")
    x = torch.randint(data.vocab_size, (2, m.block_size))
    with torch.no_grad():
        a, b = compiled(x)[0], compiled(x)[0]
        assert not torch.equal(a, b)  # fresh masks at each call in training mode
        model.eval()
        assert torch.equal(compiled(x)[0], compiled(x)[0])  # and none in evaluation


@pytest.mark.slow
def test_a_nan_is_still_caught_as_divergence_when_compiled(data):
    m, t = from_name("tiny", device="cpu", max_iters=200, learning_rate=1e6, grad_clip=0.0, compile="default")
    with pytest.raises(Diverged) as info:
        train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert 1 <= info.value.step <= 200


def test_auto_on_the_cpu_trains_eagerly_and_says_why(data):
    result = run(data, compile="auto")
    assert result.compile == "none" and result.compile_seconds == 0
    assert result.compile_reason.startswith("auto: none") and "cpu" in result.compile_reason


def test_old_boolean_compile_configs_still_load():
    assert TrainConfig(compile=True).compile == "default" and TrainConfig(compile=False).compile == "none"
    _, t = from_dict({"model": {}, "train": {"compile": True}})
    assert t.compile == "default"
    with pytest.raises(ValueError, match="compile must be one of none, default, graphs, auto, got 'yes'"):
        TrainConfig(compile="yes")


def test_graphs_needs_cuda(data):
    with pytest.raises(UserError, match="--compile graphs needs a CUDA device"):
        run(data, compile="graphs")


def test_default_on_a_cpu_without_a_compiler_is_a_one_line_user_error(data, monkeypatch):
    monkeypatch.setattr(compiling, "_cpu_compiler_missing", lambda: "No working C++ compiler found")
    with pytest.raises(UserError, match="needs a C\\+\\+ compiler \\(No working C\\+\\+ compiler found\\); install g"):
        run(data, compile="default")


def test_auto_compiles_only_when_the_saving_exceeds_the_compile_time(monkeypatch):
    monkeypatch.setattr(compiling, "ESTIMATES", {("cuda", "default"): compiling.Estimate(1.5, 60.0),
                                                 ("cuda", "graphs"): compiling.Estimate(2.0, 90.0)})
    gpu = torch.device("cuda")
    # 100 s of eager steps: default saves 100 - 66.7 - 60 < 0, graphs 100 - 50 - 90 < 0.
    assert compiling.choose(gpu, 0.1, 1000, None).mode == "none"
    # 1000 s: default saves 273 s, graphs 410 s.
    long = compiling.choose(gpu, 0.1, 10_000, None)
    assert long.mode == "graphs" and "saves ~410 s" in long.reason
    # A time budget is the same work sooner: whichever limit ends first counts.
    assert compiling.choose(gpu, 0.1, 10_000, 100.0).mode == "none"
    assert compiling.choose(gpu, 0.1, None, 1000.0).mode == "graphs"
    assert compiling.choose(torch.device("cpu"), 0.1, 10**9, None).mode == "none"  # no CPU estimate


def test_expected_saving_is_eager_time_less_compiled_time_and_compile_time():
    assert compiling.expected_saving(300.0, compiling.Estimate(2.0, 100.0)) == pytest.approx(50.0)


# --- CUDA: graphs (torch.compile's reduce-overhead CUDA graphs) ---------------------------------------------------

def gpu_run(data, steps=200, **overrides):
    settings = dict(device="cuda", dtype="bfloat16", max_iters=steps, eval_interval=50, eval_iters=4,
                    warmup_iters=20, lr_decay="cosine", grad_clip=0.5, learning_rate=3e-3, dropout=0.0,
                    **overrides)
    m, t = from_name("tiny", **settings)
    return train(m.with_vocab(data.vocab_size), t, data, progress=False)


@cuda
def test_graphs_train_to_the_eager_losses_over_200_steps(data):
    eager, graphs = gpu_run(data, compile="none"), gpu_run(data, compile="graphs")
    assert graphs.compile == "graphs" and graphs.compile_seconds > 0
    assert [p.step for p in graphs.history] == [50, 100, 150, 200]
    for a, b in zip(eager.history, graphs.history):  # bf16 rounding differs between kernels: a loose tolerance
        assert b.val_loss == pytest.approx(a.val_loss, abs=0.05)
    assert graphs.history[-1].val_loss < graphs.history[0].val_loss


@cuda
def test_graphs_keep_dropout_lr_and_clipping(data):
    r = gpu_run(data, steps=60, compile="graphs", dropout=0.2)
    assert math.isfinite(r.val_loss) and r.val_loss < math.log(data.vocab_size)
    _, t = from_name("tiny", max_iters=60, warmup_iters=20, lr_decay="cosine", learning_rate=3e-3)
    assert all(g["lr"] == pytest.approx(lr_at(t, 59, 59 / 60)) for g in r.optimizer.param_groups)
    m, _ = from_name("tiny", dropout=0.5)
    from gptcore.model import build_model

    model = build_model(m.with_vocab(data.vocab_size)).cuda()
    compiled = compiling.compile_model(model, "graphs")
    x = torch.randint(data.vocab_size, (2, m.block_size), device="cuda")
    outs = []
    for _ in range(4):  # warm-up, record, then replays: every replay draws fresh masks
        torch.compiler.cudagraph_mark_step_begin()
        outs.append(compiled(x)[0].clone())
    assert not torch.equal(outs[2], outs[3])


@cuda
def test_graphs_still_catch_a_nan_as_divergence(data):
    with pytest.raises(Diverged):
        gpu_run(data, compile="graphs", learning_rate=1e6, grad_clip=0.0)


@cuda
def test_the_corpus_sits_on_the_gpu_and_batches_are_shifted_windows(data):
    batches = data.batches("train", 8, 32, torch.device("cuda"), seed=1)
    assert batches.where == "device"
    x, y = batches()
    assert x.shape == y.shape == (8, 32) and x.device.type == "cuda" and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = torch.from_numpy(data.tokens("train").astype("int64"))
    first = x[0].cpu()
    # Each row is a window of the corpus: find where it starts and compare the whole window.
    starts = (tokens[:len(tokens) - 32] == first[0]).nonzero().flatten()
    assert any(torch.equal(tokens[s:s + 32], first) for s in starts.tolist())
    pinned = data.batches("train", 8, 32, torch.device("cuda"), seed=1, share=0.0)
    assert pinned.where == "pinned" and pinned()[0].device.type == "cuda"


def test_train_step_benchmark_runs_graphs_on_cuda_only_and_refuses_unknown_modes(capsys):
    from benchmarks.__main__ import build_parser
    from benchmarks.train_step import cases

    got = cases(["gpu"], ["cpu", "cuda"], {"cpu": ["float32"], "cuda": ["bfloat16"]}, ["none", "graphs"],
                ["course", "nanogpt"])
    assert ("gpu", "nanogpt", "cuda", "bfloat16", "graphs") in got and len(got) == 6
    assert not any(d == "cpu" and c == "graphs" for _, _, d, _, c in got)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-step", "--compile", "none,max"])
    assert "unknown compile mode max" in capsys.readouterr().err


@cuda
def test_graphs_with_gradient_accumulation_train_to_the_eager_losses(data):
    # Grads first allocated inside a captured backward would be overwritten by the next micro-batch's replay.
    eager = gpu_run(data, steps=60, compile="none", grad_accum_steps=2)
    graphs = gpu_run(data, steps=60, compile="graphs", grad_accum_steps=2)
    for a, b in zip(eager.history, graphs.history):
        assert b.val_loss == pytest.approx(a.val_loss, abs=0.05)
