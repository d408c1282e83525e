import json
import os
import stat

import pytest
import torch

from gptcore.__main__ import main
from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.cliutil import run
from gptcore.config import from_name
from gptcore.errors import UserError
from gptcore.train import train
from tests.conftest import CORPUS


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


def edit_json(file, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize("field, value, needle", [
    ("state.json", {"step": "abc"}, "state.json: step must be a non-negative integer, got 'abc'"),
    ("state.json", {"step": -3}, "state.json: step must be a non-negative integer, got -3"),
    ("config.json", {"kind": "llama"}, "config.json: model kind must be gpt or bigram, got 'llama'"),
])
def test_tampered_state_or_config_is_one_error_naming_the_file(trained, field, value, needle):
    path, *_ = trained
    edit_json(path / field, **value)
    with pytest.raises(UserError, match=needle):
        load_checkpoint(path)


def test_edited_vocabulary_is_refused_and_old_checkpoints_without_fingerprint_load(trained):
    path, *_ = trained
    vocab = json.loads((path / "vocab.json").read_text())
    original = list(vocab["chars"])
    i, j = original.index("a"), original.index("b")
    swapped = list(original)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    # Same size, still distinct and sorted (so only the saved fingerprint can tell): the last character replaced.
    replaced = [*original[:-1], chr(ord(original[-1]) + 1)]
    edit_json(path / "vocab.json", chars=swapped)  # caught by the vocabulary's own order check, or the fingerprint
    with pytest.raises(UserError, match="vocab.json: not (the vocabulary this checkpoint|a valid vocabulary)"):
        load_checkpoint(path)
    edit_json(path / "vocab.json", chars=replaced)
    with pytest.raises(UserError, match="vocab.json: not the vocabulary this checkpoint was trained with"):
        load_checkpoint(path)
    edit_json(path / "vocab.json", chars=original)
    assert load_checkpoint(path).tokenizer.chars == original
    state = json.loads((path / "state.json").read_text())
    del state["vocab_sha256"]  # a checkpoint saved before the fingerprint existed
    (path / "state.json").write_text(json.dumps(state))
    assert load_checkpoint(path).tokenizer.chars == original


def test_optimizer_state_of_another_model_is_refused(trained, data, tmp_path):
    path, *_ = trained
    for other_cfg in (dict(n_layer=3), dict(n_embed=48, n_head=2)):  # other group sizes; same sizes, other shapes
        m2, t2 = from_name("tiny", device="cpu", max_iters=2, **other_cfg)
        other = train(m2.with_vocab(data.vocab_size), t2, data, progress=False)
        torch.save(other.optimizer.state_dict(), path / "optimizer.pt")
        with pytest.raises(UserError, match="optimizer.pt: optimizer state does not fit this model"):
            load_checkpoint(path)
        assert load_checkpoint(path, with_optimizer=False).step == 20  # sampling needs no optimizer


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_honour_the_umask(trained, umask, tmp_path):
    path, result, m, t = trained
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck2", result.model, m, t, load_checkpoint(path).tokenizer,
                        optimizer=result.optimizer, step=20)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "ck2").stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "ck2").iterdir()} == {0o666 & ~umask}


def cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m gptcore")
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_train_checks_out_before_any_work(trained, tmp_path, capsys):
    path, *_ = trained
    (tmp_path / "f").write_text("a file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["--data", str(CORPUS), "--preset", "tiny", "--max-iters", "5", "--device", "cpu", "--no-progress"]
    for out, needle in [(tmp_path / "f" / "x", "f is a file, not a folder; cannot create the checkpoint there"),
                        (foreign, "foreign: exists and is not a checkpoint; refusing to replace it")]:
        code, stdout, err = cli(["train", "--out", str(out), *args], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert "data:" not in stdout  # refused before the corpus was even opened
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(foreign.iterdir()) == [foreign / "notes.txt"]
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    code, stdout, err = cli(["train", "--out", str(path), "--resume", *args], capsys)
    assert code == 2 and "optimizer.pt: optimizer state does not fit this model" in err and "data:" not in stdout
