"""The gptcore command line: the happy path once, and every user error as one line with exit code 2."""

import json
import subprocess
import sys

import pytest

from gptcore.__main__ import main
from gptcore.cliutil import run
from tests.conftest import CORPUS, ROOT

TINY = ["--preset", "tiny", "--max-iters", "30", "--device", "cpu", "--no-progress"]


def call(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m gptcore")
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ck"
    with pytest.raises(SystemExit) as info:
        run(main, ["train", "--data", str(CORPUS), "--out", str(out), *TINY])
    assert info.value.code == 0
    return out


def test_train_prints_losses_and_saves(checkpoint, capsys, tmp_path):
    code, out, _ = call(["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY,
                         "--n-layer", "1", "--lr", "0.002"], capsys)
    assert code == 0
    assert "step 25: train loss" in out and "val loss" in out and f"checkpoint: {tmp_path / 'c'}" in out
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["train"]["learning_rate"] == 0.002


def test_config_file_then_flags(capsys, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"model": {"n_embed": 48, "n_head": 3}, "train": {"batch_size": 3}}))
    code, _, _ = call(["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY,
                       "--config", str(best), "--batch-size", "5"], capsys)
    assert code == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (cfg["model"]["n_embed"], cfg["model"]["n_head"], cfg["train"]["batch_size"]) == (48, 3, 5)


def test_resume_continues_from_checkpoint_step(checkpoint, capsys):
    code, out, _ = call(["train", "--data", str(CORPUS), "--out", str(checkpoint), "--resume",
                         "--max-iters", "40", "--no-progress"], capsys)
    assert code == 0 and "10 steps (to step 40)" in out
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 40


def test_sample_is_seeded_and_chat_exits_on_eof(checkpoint, capsys, monkeypatch):
    args = ["sample", "--checkpoint", str(checkpoint), "--prompt", "Dorothy", "--max-new-tokens", "40",
            "--seed", "7"]
    code, first, _ = call(args, capsys)
    _, second, _ = call(args, capsys)
    assert code == 0 and first == second and first.startswith("Dorothy") and len(first.rstrip("\n")) == 47
    answers = iter(["Oz", "caf\u00e9"])

    def fake_input(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code, out, _ = call(["chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "5"], capsys)
    assert code == 0 and "\nOz" in out and "not in the vocabulary: '\u00e9'" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--n-layer", "0"], "n_layer must be a positive integer, got 0"),
        (["train", "--n-embed", "30", "--n-head", "4"], "n_embed must be divisible by n_head"),
        (["train", "--lr", "-1"], "learning_rate must be a positive number"),
        (["train", "--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["train", "--lr", "fast"], "argument --learning-rate/--lr: expected a number, got 'fast'"),
        (["train", "--data", "missing.txt"], "missing.txt: no such file or folder"),
        (["train", "--config", "missing.json"], "missing.json: config file not found"),
        (["train", "--device", "cuda:7"], "--device cuda:7"),
        (["train", "--dtype", "float16", "--device", "cpu"], "float16 needs a GPU"),
        (["train", "--preset", "huge"], "invalid choice: 'huge'"),
        (["sample", "--checkpoint", "nowhere"], "nowhere: no such checkpoint folder"),
        (["prepare", "missing.txt", "--out", "x"], "missing.txt: no such file or folder"),
        (["prepare", str(CORPUS), "--out", "x", "--val-fraction", "1.5"],
         "argument --val-fraction: expected a number between 0 and 1"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = call([*argv, *(["--no-progress"] if argv[0] == "train" else [])], capsys)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_prompt_characters(checkpoint, capsys):
    code, _, err = call(["sample", "--checkpoint", str(checkpoint), "--prompt", "na\u00efve"], capsys)
    assert code == 2 and "not in the vocabulary: '\u00ef'" in err
    code, out, _ = call(["sample", "--checkpoint", str(checkpoint), "--prompt", "na\u00efve", "--drop-unknown",
                         "--max-new-tokens", "3"], capsys)
    assert code == 0 and out.startswith("na\u00efve")


def test_truncated_checkpoint_from_a_real_process(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    proc = subprocess.run([sys.executable, "-m", "gptcore", "sample", "--checkpoint", str(broken)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "model.safetensors: unreadable or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
