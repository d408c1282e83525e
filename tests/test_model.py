import math

import pytest
import torch

from gptcore.config import ModelConfig
from gptcore.model import GPT, BigramLanguageModel

CFG = ModelConfig(vocab_size=50, block_size=16, n_embed=32, n_head=4, n_layer=2, dropout=0.0)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_initial_loss_is_about_ln_vocab(norm):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**CFG.__dict__, "norm": norm}))
    x = torch.randint(50, (8, 16))
    _, loss = model(x, torch.randint(50, (8, 16)))
    assert abs(loss.item() - math.log(50)) < 0.1
    logits, none = model(x)
    assert logits.shape == (8, 16, 50) and none is None


@pytest.mark.parametrize("norm, activation", [("post", "relu"), ("pre", "gelu")])
def test_causality_future_tokens_do_not_change_earlier_logits(norm, activation):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**CFG.__dict__, "norm": norm, "activation": activation})).eval()
    x = torch.randint(50, (2, 16))
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 50
    a, _ = model(x)
    b, _ = model(x2)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_sdpa_equals_manual_attention():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    x = torch.randint(50, (4, 16))
    fused, _ = model(x)
    model.set_attention("manual")
    manual, _ = model(x)
    assert torch.allclose(fused, manual, atol=1e-5)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(CFG)
    x = torch.randint(50, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_generate_crops_to_block_size_and_is_seeded():
    torch.manual_seed(0)
    model = GPT(CFG)
    idx = torch.zeros((1, 1), dtype=torch.long)
    out = model.generate(idx, 40, generator=torch.Generator().manual_seed(3))  # 41 > block_size 16
    again = model.generate(idx, 40, generator=torch.Generator().manual_seed(3))
    assert out.shape == (1, 41) and torch.equal(out, again)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros((1, 17), dtype=torch.long))


def test_generate_stops_at_eos():
    torch.manual_seed(0)
    model = GPT(CFG)
    with torch.no_grad():  # make token 7 overwhelmingly likely
        model.lm_head.bias.zero_()
        model.lm_head.bias[7] = 100.0
    out = model.generate(torch.zeros((1, 1), dtype=torch.long), 30, eos_id=7)
    assert out.tolist() == [[0, 7]]
    greedy = model.generate(torch.zeros((1, 1), dtype=torch.long), 5, temperature=0)
    assert greedy[0, 1:].tolist() == [7] * 5
    top1 = model.generate(torch.zeros((1, 1), dtype=torch.long), 5, top_k=1)
    assert top1[0, 1:].tolist() == [7] * 5


def test_param_count_and_flops():
    model = GPT(CFG)
    C, L, V, T = 32, 2, 50, 16
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C
    expected = V * C + T * C + L * per_block + 2 * C + C * V + V
    assert model.num_params() == expected
    non_emb = expected - V * C - T * C
    assert model.num_params(exclude_embeddings=True) == non_emb
    assert model.flops_per_token() == 6 * non_emb + 12 * L * C * T


def test_bigram_model():
    model = BigramLanguageModel(CFG)
    x = torch.randint(50, (2, 8))
    logits, loss = model(x, x)
    assert logits.shape == (2, 8, 50) and loss.ndim == 0
    assert model.generate(x[:, :1], 5).shape == (2, 6)


def test_a_tiny_temperature_samples_the_most_likely_token():
    """Logits divided by 1e-40 overflow to inf unless shifted by their max first (a NaN softmax then)."""
    torch.manual_seed(0)
    model = GPT(CFG)
    idx = torch.zeros((1, 1), dtype=torch.long)
    tiny = model.generate(idx, 8, temperature=1e-40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny, model.generate(idx, 8, temperature=0))
