"""A gptcore training step (forward, backward, AdamW) at the tiny and baby configs."""

import math
from pathlib import Path

import pytest
import torch

from benchmarks.clocks import CpuClock
from benchmarks.conftest import TIMERS, cuda, group, record
from gptcore.config import from_name
from gptcore.data import TokenData
from gptcore.hardware import autocast
from gptcore.model import GPT
from gptcore.prepare import prepare
from gptcore.train import configure_optimizer

CORPUS = Path(__file__).resolve().parent.parent / "data" / "wizard_of_oz.txt"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "woz"
    prepare(CORPUS, out, progress=False)
    return TokenData(out)


def make_step(preset: str, device: str, dtype: str, data: TokenData):
    m, t = from_name(preset, dropout=0.0, device=device, dtype=dtype)
    m = m.with_vocab(data.vocab_size)
    torch.manual_seed(0)
    model = GPT(m).to(device)
    opt = configure_optimizer(model, t, torch.device(device))
    x, y = data.get_batch("train", t.batch_size, m.block_size, torch.Generator().manual_seed(0), device)

    def step() -> float:
        with autocast(torch.device(device), dtype):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # .item() synchronises: the timed call includes the device's work

    tokens = t.batch_size * m.block_size
    return step, tokens, model.flops_per_token() * tokens


@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("preset, dtype", [("tiny", "float32"), ("baby", "float32"), ("baby", "bfloat16")])
def test_train_step_cpu(benchmark, data, preset, dtype, timer):
    step, tokens, flops = make_step(preset, "cpu", dtype, data)
    benchmark.group = group(f"train step {preset}", timer)
    clock = CpuClock(step)
    loss = benchmark(clock)
    record(benchmark, clock, flops, tokens, timer=timer)
    assert math.isfinite(loss) and loss < math.log(data.vocab_size) + 0.5


@cuda
@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_cuda(benchmark, data, dtype, timer):
    step, tokens, flops = make_step("baby", "cuda", dtype, data)
    benchmark.group = group("train step baby", timer)
    clock = CpuClock(step)
    loss = benchmark(clock)
    record(benchmark, clock, flops, tokens, timer=timer)
    assert math.isfinite(loss)
