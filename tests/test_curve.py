"""The training curve: train()'s on_log points, and the CSV they are written to and read back from (gptcore.curve)."""

import math
import subprocess
import sys

import pytest

from gptcore.config import from_name
from gptcore.curve import COLUMNS, CurvePoint, CurveWriter, curve_path, read_curve
from gptcore.train import CHECK_EVERY, train


def _train(data, points, **overrides):
    m, t = from_name("tiny", **{"device": "cpu", **overrides})
    return train(m.with_vocab(data.vocab_size), t, data, progress=False, on_log=points.append)


def test_on_log_gives_a_point_per_read_back_and_the_val_loss_at_each_evaluation(data):
    points = []
    result = _train(data, points, max_iters=35, eval_interval=20)
    # Read-backs every CHECK_EVERY steps, evaluations at 20 and at the end (35): one point per step at most.
    assert [p.step for p in points] == [10, 20, 30, 35] and CHECK_EVERY == 10
    assert [p.val_loss for p in points if p.val_loss is not None] == [h.val_loss for h in result.history]
    assert [p.step for p in points if p.val_loss is not None] == [h.step for h in result.history] == [20, 35]
    assert all(p.train_loss is not None and math.isfinite(p.train_loss) for p in points)
    tokens_per_step = result.tokens // result.steps
    assert [p.tokens for p in points] == [p.step * tokens_per_step for p in points]
    assert points[-1].train_seconds == pytest.approx(result.train_seconds)
    seconds = [p.train_seconds for p in points]
    assert seconds == sorted(seconds)
    # After the warm-up steps every interval has timed steps, so a rate.
    assert all(p.tokens_per_s is not None and p.tokens_per_s > 0 for p in points)


def test_a_budget_that_ends_on_a_read_back_step_gives_that_step_one_point(data):
    points = []
    result = _train(data, points, max_iters=30, eval_interval=1000)  # read back at 30, then evaluated at 30
    assert [p.step for p in points] == [10, 20, 30]
    assert points[-1].val_loss == result.val_loss and points[-1].train_loss is not None
    assert points[-1].tokens_per_s is not None


def test_the_curve_follows_the_learning_rate_schedule(data):
    points = []
    _train(data, points, max_iters=40, eval_interval=1000, warmup_iters=0, lr_decay="cosine")
    lrs = [p.lr for p in points]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # cosine decays to the budget's end


def test_a_run_stopped_by_its_callback_ends_its_curve_at_that_evaluation(data):
    points = []
    m, t = from_name("tiny", device="cpu", max_iters=100, eval_interval=15)
    train(m.with_vocab(data.vocab_size), t, data, progress=False, on_log=points.append,
          on_eval=lambda step, tr, va: "stop")
    assert [p.step for p in points] == [10, 15] and points[-1].val_loss is not None


def _point(step, val=None):
    return CurvePoint(step=step, tokens=64 * step, train_seconds=0.1 * step, train_loss=4.0 - step / 100,
                      val_loss=val, lr=1e-3 / 3, tokens_per_s=None if step < 10 else 1234.5)


def test_the_csv_reads_back_every_point_exactly(tmp_path):
    path = curve_path(tmp_path / "logs" / "trial_0003.log")
    assert path == tmp_path / "logs" / "trial_0003.curve.csv"
    path.parent.mkdir()
    points = [_point(5), _point(10), _point(20, val=2.0 / 3)]
    with CurveWriter(path) as writer:
        for p in points:
            writer.add(p)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_curve(path) == points  # floats to the last bit: 2/3 and 1e-3/3 included


def test_a_line_cut_short_by_a_kill_is_skipped_and_a_missing_file_is_no_curve(tmp_path):
    path = tmp_path / "c.curve.csv"
    with CurveWriter(path) as writer:
        writer.add(_point(10))
        writer.add(_point(20, val=1.5))
    text = path.read_text()
    path.write_text(text[:-9])  # the last line, cut inside its figures
    assert read_curve(path) == [_point(10)]
    assert read_curve(tmp_path / "none.curve.csv") == []


def test_a_file_that_is_no_curve_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "bad.curve.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.curve\.csv: line 1: expected the header"):
        read_curve(path)
    path.write_text(",".join(COLUMNS) + "\n10,640,0.5,x,,0.001,\n")
    with pytest.raises(ValueError, match=r"line 2: could not convert"):
        read_curve(path)


def test_a_write_that_fails_ends_the_curve_not_the_run(tmp_path, capsys):
    writer = CurveWriter(tmp_path / "no-such-folder" / "c.curve.csv")  # cannot be opened
    writer.add(_point(10))  # no exception: the training goes on
    writer.close()
    assert "the curve stops here" in capsys.readouterr().err


def test_reading_a_curve_imports_no_torch(tmp_path):
    # The tuner's parent reads the curves and must never import torch.
    code = "import sys, gptcore.curve; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- `gptcore train`: curve.csv beside the checkpoint ------------------------------------------------------------


def _gptcore(argv, capsys):
    from gptcore.__main__ import main
    from gptcore.cliutil import run

    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m gptcore")
    return info.value.code, *capsys.readouterr()


def test_gptcore_train_writes_its_curve_into_the_checkpoint_and_a_resume_continues_it(tmp_path, capsys):
    import json

    from tests.conftest import CORPUS

    out = tmp_path / "ck"
    tiny = ["--data", str(CORPUS), "--out", str(out), "--preset", "tiny", "--device", "cpu", "--no-progress"]
    code, _, err = _gptcore(["train", *tiny, "--max-iters", "30", "--eval-interval", "15"], capsys)
    assert code == 0, err
    first = read_curve(out / "curve.csv")
    result = json.loads((out / "state.json").read_text())["result"]
    # Read back every 10 steps buffered: the evaluation at 15 reads back too, so the next read-back is at 25.
    assert [p.step for p in first] == [10, 15, 25, 30]
    assert [p.val_loss for p in first if p.val_loss is not None] == [h["val_loss"] for h in result["history"]]
    code, _, err = _gptcore(["train", *tiny, "--resume", "--max-iters", "50"], capsys)
    assert code == 0, err
    both = read_curve(out / "curve.csv")
    assert both[:len(first)] == first and [p.step for p in both[len(first):]] == [40, 45, 50]  # 45: an evaluation


def test_gptcore_train_refuses_to_resume_onto_a_curve_that_is_no_curve(tmp_path, capsys):
    from tests.conftest import CORPUS

    out = tmp_path / "ck"
    tiny = ["--data", str(CORPUS), "--out", str(out), "--preset", "tiny", "--device", "cpu", "--no-progress",
            "--max-iters", "10"]
    assert _gptcore(["train", *tiny], capsys)[0] == 0
    (out / "curve.csv").write_text("not,a,curve\n")
    before = (out / "model.safetensors").read_bytes()
    code, _, err = _gptcore(["train", *tiny, "--resume", "--max-iters", "20"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "curve.csv: line 1: expected the header" in err
    assert (out / "model.safetensors").read_bytes() == before  # refused before training: the checkpoint is as it was
