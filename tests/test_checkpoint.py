import json

import pytest
import torch

from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.config import from_name
from gptcore.errors import UserError
from gptcore.train import train


@pytest.fixture
def trained(data, tmp_path):
    m, t = from_name("tiny", device="cpu", max_iters=20)
    m = m.with_vocab(data.vocab_size)
    result = train(m, t, data, progress=False)
    path = save_checkpoint(tmp_path / "ck", result.model, m, t, data.tokenizer, optimizer=result.optimizer, step=20)
    return path, result, m, t


def test_save_load_gives_identical_logits(trained):
    path, result, m, t = trained
    ckpt = load_checkpoint(path)
    assert (ckpt.model_cfg, ckpt.train_cfg, ckpt.step) == (m, t, 20)
    x = torch.randint(m.vocab_size, (2, m.block_size))
    result.model.eval()
    assert torch.equal(ckpt.build_model()(x)[0], result.model(x)[0])
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "optimizer.pt", "config.json", "vocab.json", "state.json"])


def test_resume_continues_step_and_optimizer_state(trained, data):
    path, _, m, t = trained
    ckpt = load_checkpoint(path)
    adam_steps = [s["step"] for s in ckpt.optimizer_state["state"].values()]
    assert all(float(s) == 20 for s in adam_steps)
    t2 = type(t)(**{**t.__dict__, "max_iters": 30})
    result = train(m, t2, data, model=ckpt.build_model().train(), optimizer_state=ckpt.optimizer_state,
                   start_step=ckpt.step, progress=False)
    assert result.steps == 10 and result.history[-1].step == 30
    assert all(float(s["step"]) == 30 for s in result.optimizer.state_dict()["state"].values())


def test_damaged_checkpoints_fail_clearly(trained, tmp_path):
    path, *_ = trained
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors: unreadable or truncated"):
        load_checkpoint(path)
    weights.unlink()
    with pytest.raises(UserError, match="model.safetensors: missing"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_mismatched_vocab_or_shapes_fail_clearly(trained):
    path, *_ = trained
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["vocab_size"] += 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="vocabulary has 80 characters but the model expects 81"):
        load_checkpoint(path)
    cfg["model"]["vocab_size"] -= 1
    cfg["model"]["n_layer"] += 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="weights do not match its config"):
        load_checkpoint(path)


def test_failed_save_keeps_previous_checkpoint(trained, monkeypatch):
    path, result, m, t = trained
    before = (path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gptcore.checkpoint.torch.save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, result.model, m, t, load_checkpoint(path).tokenizer, optimizer=result.optimizer)
    assert (path / "model.safetensors").read_bytes() == before
    assert not list(path.parent.glob(".ck.partial-*"))
