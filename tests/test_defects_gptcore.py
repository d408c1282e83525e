"""Issue #24 defects on the gptcore side, one class per section: each test failed on the code before its fix.

Every bad input must end in one line naming the flag, file or value and what was expected, exit code 2, no
traceback, and nothing created or left behind.
"""

from __future__ import annotations

import json
import signal

import pytest

from gptcore import files
from gptcore.errors import UserError
from gptcore.files import read_json_object
from tests.conftest import CORPUS
from tests.test_cli import TINY, call, checkpoint  # noqa: F401 (checkpoint: the tiny trained model fixture)

DEEP = "[" * 100_000 + "]" * 100_000  # overflowed the JSON parser's stack: a RecursionError traceback


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- one JSON reader (#21.6, #24.11) ---


@pytest.mark.parametrize("content, needle", [
    (None, "no such file (expected a JSON config)"),
    ("{oops", "not JSON (Expecting property name"),
    (b"\xff\xfe{}", "not JSON (not UTF-8 text at byte 0)"),
    ("[1, 2]", "expected a JSON config, got a JSON array"),
    (DEEP, f"nested deeper than {files.JSON_MAX_DEPTH} levels"),
    ('{"a": ' * 100 + "1" + "}" * 100, f"nested deeper than {files.JSON_MAX_DEPTH} levels"),
    ('{"a": "\\ud800"}', "lone surrogate"),
    ('{"a": "' + "x" * 300_000 + '"}', "larger than"),
])
def test_read_json_object_refuses_each_bad_file_in_one_line(tmp_path, monkeypatch, content, needle):
    path = tmp_path / "c.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as info:
        read_json_object(path, "a JSON config", flag="--config", max_bytes=250_000)
    message = str(info.value)
    assert message.startswith(f"--config {path}: ") and needle in message and "\n" not in message


def test_read_json_object_reads_a_device_only_up_to_its_bound(tmp_path):
    with pytest.raises(UserError, match="/dev/zero: larger than 1 MiB"):
        read_json_object("/dev/zero", max_bytes=2**20)
    with pytest.raises(UserError, match="a folder; expected a JSON object"):
        read_json_object(tmp_path)


def test_a_config_nested_100000_deep_is_one_line_and_creates_nothing(capsys, tmp_path):
    config = tmp_path / "deep.json"
    config.write_text('{"model": ' + DEEP + "}")
    out = tmp_path / "ck"
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY, "--config", str(config)], capsys)
    assert code == 2 and f"{config}: JSON nested deeper than" in one_line(err) and not out.exists()


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "a", "completion": ' + DEEP + "}", "line 2: JSON nested deeper than"),
    ('{"prompt": "a", "completion": "b\\udc00"}', "line 2: a string holds a lone surrogate"),
])
def test_a_deep_or_surrogate_pair_is_refused_at_read(checkpoint, capsys, tmp_path, line, needle):  # noqa: F811
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + line + "\n")
    out = tmp_path / "ft"
    code, _, err = call(["finetune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                         "--device", "cpu", "--extend-vocab", "--max-iters", "2"], capsys)
    assert code == 2 and f"--data {data}: {needle}" in one_line(err) and not out.exists()


@pytest.mark.parametrize("name", ["state.json", "config.json", "vocab.json"])
def test_a_deep_checkpoint_file_is_one_line(checkpoint, capsys, tmp_path, name):  # noqa: F811
    import shutil

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    (copy / name).write_text(DEEP)
    code, _, err = call(["sample", "--checkpoint", str(copy), "--prompt", "a", "--max-new-tokens", "2"], capsys)
    assert code == 2 and f"{copy / name}: JSON nested deeper than" in one_line(err)


def test_a_deep_meta_json_is_one_line(prepared, capsys, tmp_path):
    import shutil

    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    (copy / "meta.json").write_text(DEEP)
    out = tmp_path / "ck"
    code, _, err = call(["train", "--data", str(copy), "--out", str(out), *TINY], capsys)
    assert code == 2 and f"{copy / 'meta.json'}: JSON nested deeper than" in one_line(err) and not out.exists()


def test_a_deep_space_file_is_one_line(tmp_path):
    from tune.core.space import load_space

    space = tmp_path / "space.json"
    space.write_text(DEEP)
    with pytest.raises(UserError, match=f"--space {space}: JSON nested deeper than"):
        load_space(str(space), "cpu", None, {})


# --- #24.2: `train --out DIR` deleted files it did not write ---


def test_train_refuses_a_checkpoint_folder_holding_a_users_file_and_keeps_it(checkpoint, capsys, tmp_path):  # noqa: F811
    import shutil

    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY], capsys)
    line = one_line(err)
    assert code == 2 and f"{out}: holds notes.txt, which a checkpoint does not" in line
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no partial folder left beside it


def test_a_checkpoint_folder_of_owned_files_only_is_still_replaced(checkpoint, capsys, tmp_path):  # noqa: F811
    import shutil

    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY, "--max-iters", "2"], capsys)
    assert code == 0, err
    assert json.loads((out / "state.json").read_text())["step"] == 2


def test_a_file_appearing_during_training_is_kept_and_the_save_refused(tmp_path):
    from gptcore.files import atomic_dir

    out = tmp_path / "ck"
    with atomic_dir(out, "state.json", "checkpoint", ("state.json",)) as tmp:
        (tmp / "state.json").write_text("{}")
    with pytest.raises(UserError, match="holds notes.txt"), \
            atomic_dir(out, "state.json", "checkpoint", ("state.json",)) as tmp:
        (tmp / "state.json").write_text("{}")
        (out / "notes.txt").write_text("mine")  # the user writes while the new result is being made
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_prepare_refuses_a_prepared_folder_holding_a_users_file(prepared, capsys, tmp_path):
    import shutil

    out = tmp_path / "prep"
    shutil.copytree(prepared, out)
    (out / "README").write_text("mine")
    code, _, err = call(["prepare", str(CORPUS), "--out", str(out)], capsys)
    assert code == 2 and "holds README, which a prepared-data folder does not" in one_line(err)
    assert (out / "README").read_text() == "mine"


# --- #24.3: paths read from files (meta.json, a checkpoint folder, the study's checkpoint attribute) ---


def _bpe_meta(prepared, tmp_path, name):
    """A copy of the prepared folder whose meta.json names tokenizer file `name`."""
    import shutil

    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["tokenizer"] = {"type": "bpe", "file": name, "sha256": "0" * 64, "vocab_size": meta["vocab_size"]}
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("name, needle", [
    ("../../../../../../../../etc/hostname", "points outside"),
    ("/etc/hostname", "points outside"),
    ("zero", "points outside"),  # a link, inside the folder, to /dev/zero
    ("sub", "not a regular file"),
    ("out", "points outside"),  # a link inside the folder to a file outside it
    (7, "must be a file name"),
])
def test_a_meta_json_tokenizer_file_outside_its_folder_is_refused(prepared, capsys, tmp_path, name, needle):
    copy = _bpe_meta(prepared, tmp_path, name)
    (copy / "zero").symlink_to("/dev/zero")
    (copy / "sub").mkdir()
    (tmp_path / "secret.json").write_text("{}")
    (copy / "out").symlink_to(tmp_path / "secret.json")
    out = tmp_path / "ck"
    code, _, err = call(["train", "--data", str(copy), "--out", str(out), *TINY], capsys)
    line = one_line(err)
    assert code == 2 and f"{copy / 'meta.json'}: bad tokenizer" in line and needle in line and not out.exists()


def test_a_checkpoint_file_linked_out_of_its_folder_is_refused(checkpoint, capsys, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    (tmp_path / "elsewhere.json").write_text((copy / "config.json").read_text())
    (copy / "config.json").unlink()
    (copy / "config.json").symlink_to(tmp_path / "elsewhere.json")
    code, _, err = call(["sample", "--checkpoint", str(copy), "--prompt", "a", "--max-new-tokens", "2"], capsys)
    assert code == 2 and f"{copy / 'config.json'}: a checkpoint file points outside" in one_line(err)


def _study_folder(source, tmp_path):
    import shutil

    folder = tmp_path / "results" / "s"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copytree(source, folder / "checkpoints" / "trial_0000")
    return folder


def test_the_best_model_copy_refuses_a_checkpoint_outside_the_studys_folder(checkpoint, tmp_path):  # noqa: F811
    import shutil

    import pandas as pd

    from tune.report.frame import keep_best_model

    folder = _study_folder(checkpoint, tmp_path)
    crafted = tmp_path / "home"  # a crafted `checkpoint` attribute naming a folder the study never wrote
    shutil.copytree(checkpoint, crafted)
    (crafted / "id_rsa").write_text("secret")
    note = keep_best_model(pd.Series({"checkpoint": str(crafted)}), folder)
    assert note and "points outside" in note and not (folder / "best-model").exists()
    escape = str(folder / "checkpoints" / ".." / ".." / ".." / "home")
    note = keep_best_model(pd.Series({"checkpoint": escape}), folder)
    assert note and "points outside" in note and not (folder / "best-model").exists()


def test_the_best_model_copy_takes_only_checkpoint_files_and_follows_no_link_out(checkpoint, tmp_path):  # noqa: F811
    import pandas as pd

    from gptcore.checkpoint import load_checkpoint
    from tune.report.frame import keep_best_model

    folder = _study_folder(checkpoint, tmp_path)
    src = folder / "checkpoints" / "trial_0000"
    (src / "extra").mkdir()
    (src / "extra" / "big.bin").write_bytes(b"x")
    assert keep_best_model(pd.Series({"checkpoint": str(src)}), folder) is None
    assert sorted(p.name for p in (folder / "best-model").iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    load_checkpoint(folder / "best-model")
    (tmp_path / "secret").write_text("secret")
    (src / "optimizer.pt").unlink()
    (src / "optimizer.pt").symlink_to(tmp_path / "secret")
    note = keep_best_model(pd.Series({"checkpoint": str(src)}), folder)
    assert note and "optimizer.pt: a checkpoint file points outside" in note
    assert "secret" not in [p.read_text(errors="replace") for p in (folder / "best-model").iterdir()]


# --- #24.6: a full disk (injected ENOSPC; a real small tmpfs was tried by hand) ---


def _enospc(*args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("resume", [False, True])
def test_train_on_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(checkpoint, capsys, tmp_path,  # noqa: F811
                                                                           monkeypatch, resume):
    import shutil

    import gptcore.checkpoint

    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(gptcore.checkpoint, "save_file", _enospc)
    extra = ["--resume", "--max-iters", "35"] if resume else []
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY, *extra], capsys)
    line = one_line(err)
    assert code == 2 and f"{out}: no space left on the device for the checkpoint (it needs about" in line
    assert f"{out} keeps its earlier checkpoint" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _leftovers(tmp_path) == []


def test_a_full_disk_reported_as_a_runtime_error_is_named_too(capsys, tmp_path, monkeypatch):
    import collections
    import shutil

    import gptcore.checkpoint

    def torch_save_on_full_disk(*args, **kwargs):  # what torch.save raised on a full tmpfs
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7168 vs 7060")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(gptcore.checkpoint.torch, "save", torch_save_on_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**20, 2**20 - 4096, 4096))
    out = tmp_path / "ck"
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY, "--max-iters", "2"], capsys)
    line = one_line(err)
    assert code == 2 and "no space left on the device for the checkpoint" in line and "0.0 MiB free" in line
    assert f"nothing was written to {out}" in line and list(tmp_path.iterdir()) == []


def test_prepare_on_a_full_disk_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_settle_tree", _enospc)  # fsync reports a full disk on some file systems
    out = tmp_path / "prep"
    code, _, err = call(["prepare", str(CORPUS), "--out", str(out), "--no-progress"], capsys)
    line = one_line(err)
    assert code == 2 and f"{out}: no space left on the device for the prepared-data folder" in line
    assert f"nothing was written to {out}" in line and list(tmp_path.iterdir()) == []


def test_the_best_model_copy_on_a_full_disk_is_a_note_and_claims_no_model(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    import pandas as pd

    import tune.report.frame
    from tune.report.frame import keep_best_model

    folder = _study_folder(checkpoint, tmp_path)
    monkeypatch.setattr(tune.report.frame.shutil, "copyfile", _enospc)
    note = keep_best_model(pd.Series({"checkpoint": str(folder / "checkpoints" / "trial_0000")}), folder)
    assert note and note.startswith("best-model/: not written - ") and "no space left on the device" in note
    assert not (folder / "best-model").exists() and _leftovers(folder) == []


# --- #24.7: SIGTERM (kill, systemd, Slurm) is handled like Ctrl-C ---


def test_sigterm_mid_training_saves_a_loadable_checkpoint_and_exits_like_ctrl_c(tmp_path):
    from gptcore.checkpoint import load_checkpoint
    from tests.test_train_interrupt import FRESH, MAX_ITERS, Cli, gptcore

    out = tmp_path / "ck"
    cli = Cli(gptcore("train", "--out", str(out), *FRESH, "--max-iters", str(MAX_ITERS)))
    cli.wait_for("step 10: train loss")
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.finish() == 130
    ckpt = load_checkpoint(out)
    err = "".join(cli.err)
    assert "SIGTERM: stopping after this step" in err and "Traceback" not in err
    assert f"interrupted: checkpoint saved at step {ckpt.step}" in err and ckpt.step >= 10


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_a_group_sigterm_to_the_tuner_leaves_no_trial_running(tmp_path, sigint):
    # SIGINT ignored: as `nohup` or a script's `cmd &` starts it. The kill must still stop it (it was ignored).
    import os
    import subprocess
    import sys
    import time

    import optuna
    import pandas as pd

    from tests.conftest import ROOT
    from tests.test_tune import TINY_SPACE

    results = tmp_path / "r"
    space_flags = [arg for k, v in TINY_SPACE.items() for arg in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]
    # A session of its own: the signal goes to the tuner and its trial processes at once, as systemd sends it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune", "--trials", "3", "--budget", "30s", "--references", "none", "--device", "cpu",
         "--results", str(results), "--study-name", "c", "--no-progress", *space_flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    log = results / "c" / "logs" / "trial_0000.log"
    deadline = time.time() + 60
    while not log.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the trial is training now
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    df = pd.read_csv(results / "c" / "trials.csv")
    assert "running" not in set(df["status"]) and df.loc[0, "status"] == "interrupted", out
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{results / 'c' / 'study.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


# --- #24.10: sizes nobody checked are refused before anything is allocated ---

SMALL_HOST = 16 * 2**30  # the check is made against a 16 GiB machine, whatever this one has


@pytest.mark.parametrize("model, needle", [
    ({"n_embed": 65536, "n_head": 2}, "n_layer=2, n_embed=65536"),
    ({"n_layer": 1_000_000}, "n_layer=1000000, n_embed=32"),
])
def test_train_refuses_a_model_larger_than_the_machine_before_allocating(capsys, tmp_path, monkeypatch, model,
                                                                       needle):
    import gptcore.memory

    monkeypatch.setattr(gptcore.memory, "host_memory_bytes", lambda: SMALL_HOST)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"model": model}))
    out = tmp_path / "ck"
    code, _, err = call(["train", "--data", str(CORPUS), "--out", str(out), *TINY, "--config", str(best)], capsys)
    line = one_line(err)
    assert code == 2 and f"--config {best}: a model of {needle}" in line
    assert "more than the 16.0 GiB of this machine's memory" in line and not out.exists()


def test_a_checkpoint_config_too_large_for_the_machine_is_refused_before_building(checkpoint, capsys,  # noqa: F811
                                                                                tmp_path, monkeypatch):
    import shutil

    import gptcore.memory

    monkeypatch.setattr(gptcore.memory, "host_memory_bytes", lambda: SMALL_HOST)
    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model"].update(n_embed=65536, n_head=2)
    (copy / "config.json").write_text(json.dumps(cfg))
    code, _, err = call(["sample", "--checkpoint", str(copy), "--prompt", "a", "--max-new-tokens", "2"], capsys)
    line = one_line(err)
    assert code == 2 and f"{copy / 'config.json'}: a model of n_layer=2, n_embed=65536" in line
    assert "GiB (weights," in line


def test_a_model_that_fits_is_not_refused():
    from gptcore.config import ModelConfig
    from gptcore.memory import check_fits

    check_fits(ModelConfig(vocab_size=65, n_layer=4, n_embed=128, n_head=4), "x", training=True,
               device="cuda:0", device_bytes=2**30)
    with pytest.raises(UserError, match="more than the 1.0 GiB of cuda:0's memory"):
        check_fits(ModelConfig(vocab_size=65, n_layer=48, n_embed=1024, n_head=8), "x", training=True,
                   device="cuda:0", device_bytes=2**30)


def test_a_trial_whose_checkpoint_did_not_fit_reports_no_model(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import gptcore.checkpoint
    from tune.exec.protocol import TrialJob
    from tune.exec.worker import _keep_model

    def full(path, *args, **kwargs):
        raise UserError(f"{path}: no space left on the device for the checkpoint")

    monkeypatch.setattr(gptcore.checkpoint, "save_checkpoint", full)
    job = TrialJob(model={}, train={}, data="", device="cpu", log=str(tmp_path / "log"),
                   checkpoint=str(tmp_path / "checkpoints" / "trial_0000"))
    result = SimpleNamespace(stopped_by="max_iters", model=None, optimizer=None, steps=3, val_loss=1.0)
    assert _keep_model(job, result, None, None, SimpleNamespace(tokenizer=None)) is None
    assert "no space left" in capsys.readouterr().err and not (tmp_path / "checkpoints").exists()
