"""The search side's settings, session, warm start, references and full disks (#21.6, #21.7, #24.6, #24.12)."""

from __future__ import annotations

import shutil

import pytest

from gptcore.errors import UserError
from gptcore.files import check_room
from tests.conftest import CORPUS
from tests.test_tune import TINY_SPACE, settings
from tune.__main__ import build_parser, settings_from_args
from tune.core.budget import Budget
from tune.exec.runner import TrialRunner
from tune.search.session import RESULTS_ROOM, open_session
from tune.search.settings import TuneSettings

SPACE_FLAGS = [a for k, v in TINY_SPACE.items() for a in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]


def command(tmp_path) -> list[str]:
    """A command line that sets most flags away from their defaults."""
    return ["--trials", "3", "--budget", "40steps", "--references", "baby", "--confirm", "1", "--study-name", "g",
            "--results", str(tmp_path), "--data", str(CORPUS), "--device", "cpu", *SPACE_FLAGS, "--seed", "3",
            "--schedule", "wsd", "--pruner", "median", "--sampler", "random", "--rungs", "2",
            "--reduction-factor", "4", "--no-save-models", "--no-progress", "--trial-timeout", "99",
            "--heartbeat-interval", "5", "--grace-period", "30", "--workers", "1"]


# --- #21.7: TuneSettings in groups, built once from the flags -------------------------------------------------------


def test_grouped_settings_hold_every_flag_as_the_flat_settings_did(tmp_path):
    args = build_parser().parse_args(command(tmp_path))
    flat = settings_from_args(args).flat()
    # The flat TuneSettings the CLI built before the groups, field by field from the same flags.
    assert flat == dict(
        trials=3, budget=Budget(40, "steps"), rungs=2, reduction_factor=4, schedule="wsd", references=("baby",),
        save_models=False, data=CORPUS, device="cpu", study_name="g", warm_start=None, storage=None,
        results=tmp_path, space="auto", space_overrides={k: tuple(v) for k, v in TINY_SPACE.items()},
        objective="loss", memory_limit=None, predict=True, pruner="median", sampler="random", seed=3,
        dtype="auto", trial_timeout=99.0, progress=False, workers=1, gpus=None, cores=None, heartbeat_interval=5,
        grace_period=30, confirm=1, quiet=False, eval_iters=4, eval_batch_size=32)
    assert TuneSettings.of(**flat) == settings_from_args(args)  # the flat names reach the same groups


def test_the_settings_a_study_stores_are_the_flat_dict_they_were(tmp_path):
    session = open_session(settings_from_args(build_parser().parse_args(command(tmp_path))), TrialRunner())
    try:
        stored = session.study.user_attrs["settings"]
    finally:
        session.close()
    # What the flat TuneSettings stored for this command line (recorded before the groups): reports read it back.
    assert stored == {
        "budget": "40 steps", "budget_amount": 40, "budget_unit": "steps", "rungs": [0.25, 1], "reduction_factor": 4,
        "schedule": "wsd", "objective": "loss", "dtype": "float32", "pruner": "median", "references": ["baby"],
        "memory_limit_bytes": None, "predict": True,
        "space": {"batch_size": [2, 4], "block_size": [8, 16], "n_embed": [64, 64], "n_head": [1, 2],
                  "n_layer": [1, 1], "learning_rate": [0.001, 0.01]},
        "eval_iters": 4, "eval_batch_size": 32, "corpus": str(CORPUS), "seed": 3, "sampler": "random", "trials": 3,
        "confirm": 1, "confirm_runs": 2}


def test_an_unknown_flat_setting_is_named():
    with pytest.raises(TypeError, match="unknown setting.*trails"):
        TuneSettings.of(trails=3)


# --- #21.6 / #24.6: one writable-folder check, with the free space the caller needs ----------------------------------


def full_disk(monkeypatch, free: int = 2**20) -> None:
    """Every disk reports `free` bytes free (shutil.disk_usage is what gptcore.files.check_room asks)."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_check_room_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    check_room(tmp_path / "a" / "b", "table")  # nothing asked: any disk will do
    with pytest.raises(UserError, match=rf"^{tmp_path / 'a' / 'b'}: only 1\.0 MiB free on its disk, 64 MiB needed "
                                        r"for the table$"):
        check_room(tmp_path / "a" / "b", "table", need=64 * 2**20)
    assert not (tmp_path / "a").exists()  # nothing created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="f is a file, not a folder"):
        check_room(tmp_path / "f" / "sub", "table")


def test_a_full_disk_at_start_is_one_line_before_anything_is_created(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    results = tmp_path / "results"
    with pytest.raises(UserError, match=rf"^--results {results / 't'}: only 1\.0 MiB free on its disk, "
                                        rf"{RESULTS_ROOM // 2**20} MiB needed for the study's results$"):
        open_session(settings(tmp_path, trials=1), TrialRunner())
    assert not results.exists()
