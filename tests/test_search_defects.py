"""The search side's settings, session, warm start, references and full disks (#21.6, #21.7, #24.6, #24.12)."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from gptcore.cliutil import run
from gptcore.config import from_dict, from_name
from gptcore.errors import UserError
from gptcore.files import check_room
from tests.conftest import CORPUS
from tests.test_tune import TINY_SPACE, settings
from tune.__main__ import build_parser, main, settings_from_args
from tune.core.budget import SCHEDULES, Budget, RungPlan
from tune.core.space import Space, preset_params
from tune.exec.runner import TrialRunner
from tune.report import outputs
from tune.search import study as study_module
from tune.search.session import (
    REFERENCES,
    RESULTS_ROOM,
    Session,
    full_disk,
    open_session,
    reference_configs,
    trial_configs,
)
from tune.search.settings import TuneSettings

STEADY = "tests.tune_faults:steady"  # a stand-in for gptcore.train.train that "trains" at once

SPACE_FLAGS = [a for k, v in TINY_SPACE.items() for a in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]


def command(tmp_path) -> list[str]:
    """A command line that sets most flags away from their defaults."""
    return ["--trials", "3", "--budget", "40steps", "--references", "baby", "--confirm", "1", "--study-name", "g",
            "--results", str(tmp_path), "--data", str(CORPUS), "--device", "cpu", *SPACE_FLAGS, "--seed", "3",
            "--schedule", "wsd", "--pruner", "median", "--sampler", "random", "--rungs", "2",
            "--reduction-factor", "4", "--no-save-models", "--no-progress", "--trial-timeout", "99",
            "--heartbeat-interval", "5", "--grace-period", "30", "--workers", "1", "--keep-models", "1",
            "--compile", "none"]


# --- #21.7: TuneSettings in groups, built once from the flags -------------------------------------------------------


def test_grouped_settings_hold_every_flag_as_the_flat_settings_did(tmp_path):
    args = build_parser().parse_args(command(tmp_path))
    flat = settings_from_args(args).flat()
    assert flat.pop("space_params") == {}  # no --param given (a setting added since: tests/test_space_fields.py)
    assert flat.pop("max_time") is None  # no --max-time given (tests/test_anytime.py)
    assert flat.pop("model") == ""  # no --model given: gptcore's GPT (tests/test_user_model.py)
    # The flat TuneSettings the CLI built before the groups, field by field from the same flags.
    assert flat == dict(
        trials=3, budget=Budget(40, "steps"), rungs=2, reduction_factor=4, schedule="wsd", references=("baby",),
        save_models=False, data=CORPUS, device="cpu", study_name="g", warm_start=None, storage=None,
        results=tmp_path, space="auto", space_overrides={k: tuple(v) for k, v in TINY_SPACE.items()},
        objective="loss", memory_limit=None, predict=True, pruner="median", sampler="random", seed=3,
        dtype="auto", trial_timeout=99.0, progress=False, workers=1, gpus=None, cores=None, heartbeat_interval=5,
        grace_period=30, confirm=1, confirm_rule="sequential",
        quiet=False, eval_iters=4, eval_batch_size=32, keep_models=1,
        compile="none", log_to=())
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
        "confirm": 1, "confirm_runs": 2, "confirm_rule": "sequential",
        "save_models": False, "keep_models": 1, "compile": "none",
        "model": ""}  # "": gptcore's GPT (--model, tests/test_user_model.py)


def test_an_unknown_flat_setting_is_named():
    with pytest.raises(TypeError, match="unknown setting.*trails"):
        TuneSettings.of(trails=3)


# --- #21.6 / #24.6: one writable-folder check, with the free space the caller needs ----------------------------------


def disk_full(monkeypatch, free: int = 2**20) -> None:
    """Every disk reports `free` bytes free (shutil.disk_usage is what gptcore.files.check_room asks)."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_check_room_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    disk_full(monkeypatch)
    check_room(tmp_path / "a" / "b", "table")  # nothing asked: any disk will do
    with pytest.raises(UserError, match=rf"^{tmp_path / 'a' / 'b'}: only 1\.0 MiB free on its disk, 64 MiB needed "
                                        r"for the table$"):
        check_room(tmp_path / "a" / "b", "table", need=64 * 2**20)
    assert not (tmp_path / "a").exists()  # nothing created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="f is a file, not a folder"):
        check_room(tmp_path / "f" / "sub", "table")


def test_a_full_disk_at_start_is_one_line_before_anything_is_created(tmp_path, monkeypatch):
    disk_full(monkeypatch)
    results = tmp_path / "results"
    with pytest.raises(UserError, match=rf"^--results {results / 't'}: only 1\.0 MiB free on its disk, "
                                        rf"{RESULTS_ROOM // 2**20} MiB needed for the study's results$"):
        open_session(settings(tmp_path, trials=1), TrialRunner())
    assert not results.exists()


# --- #24.12: references train like searched trials ---------------------------------------------------------------


def a_session(**kw) -> Session:
    """A session as trial_configs reads it (settings, vocabulary, precision, budget, device), nothing opened."""
    budget = Budget(10, "s")
    return Session(TuneSettings.of(**kw), None, None, Space(), {"device": "cpu"}, {"vocab_size": 80}, None, None,
                   "float32", None, budget, RungPlan.for_budget(budget), [], (), None)


@pytest.mark.parametrize("preset", sorted({p for names in REFERENCES.values() for p in names}))
def test_a_reference_trains_like_a_searched_trial_but_for_its_six_values(preset):
    session = a_session(schedule="wsd", seed=5)
    model, train = reference_configs(preset, session)
    m, t = from_dict({"model": model, "train": train})
    own_model, own_train = from_name(preset)
    assert (m.block_size, m.n_embed, m.n_head, m.n_layer, t.batch_size, t.learning_rate) == (
        own_model.block_size, own_model.n_embed, own_model.n_head, own_model.n_layer, own_train.batch_size,
        own_train.learning_rate)
    # Everything else is what every searched trial gets: the study's schedule, no warm-up, no dropout, its seed.
    assert (model, train) == trial_configs(preset_params(preset), session)
    assert (t.lr_decay, t.warmup_iters, m.dropout, t.seed) == (SCHEDULES["wsd"], 0, 0.0, 5)


# --- #24.6: a disk that fills up mid-study ---------------------------------------------------------------------------


def test_full_disk_finds_enospc_or_sqlite_full_in_the_chain(tmp_path):
    assert full_disk(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))) == str(tmp_path / "x")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("while recording") from exc
    except RuntimeError as outer:
        assert full_disk(outer) == "the disk"
    assert full_disk(Exception("(sqlite3.OperationalError) database or disk is full")) == "the study's storage"
    assert full_disk(OSError(errno.EACCES, "Permission denied")) is None and full_disk(ValueError("x")) is None


def run_tune(argv: list[str]) -> int:
    """python -m tune in this process, as the console runs it: its exit code."""
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m tune")
    return info.value.code


def test_a_disk_that_fills_mid_study_ends_it_in_one_line_with_the_trial_recorded_interrupted(tmp_path, monkeypatch,
                                                                                              capsys):
    results = tmp_path / "results"
    db = results / "f" / "study.db"

    def enospc(*args, **kwargs):  # the parent writing a finished trial's record: the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(db))

    monkeypatch.setattr(study_module, "record", enospc)
    monkeypatch.setattr(study_module, "run_study", functools.partial(study_module.run_study, target=STEADY))
    code = run_tune(["--trials", "3", "--budget", "60steps", "--references", "none", "--confirm", "0",
                     "--device", "cpu", "--results", str(results), "--study-name", "f", "--no-progress", "-q",
                     *SPACE_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"python -m tune: error: {db}: no space left on its disk; free at least "
                      f"{RESULTS_ROOM // 2**20} MiB there and run the same command again to resume the study (the "
                      f"interrupted trial runs again)")
    trials = optuna.load_study(study_name="f", storage=f"sqlite:///{db}").get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    # The trial it hit is closed as interrupted (not the configuration's error) and queued again; no other ran.
    assert [(t.state, t.user_attrs.get("status")) for t in finished] == [(TrialState.FAIL, "interrupted")]
    assert [t.state for t in trials if not t.state.is_finished()] == [TrialState.WAITING]


def test_a_disk_that_fills_while_the_report_is_written_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    real = outputs.atomic_write

    def enospc(path, write):
        if Path(path).name == "trials.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(outputs, "atomic_write", enospc)
    monkeypatch.setattr(study_module, "run_study", functools.partial(study_module.run_study, target=STEADY))
    code = run_tune(["--trials", "1", "--budget", "60steps", "--references", "none", "--confirm", "0",
                     "--device", "cpu", "--results", str(results), "--study-name", "r", "--no-progress", "-q",
                     *SPACE_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f"python -m tune: error: {results / 'r' / 'trials.csv'}: no space left on its disk; free at least "), err


def test_the_cost_floor_counts_each_runs_start_up_from_the_studys_own_runs():
    """#24.15: the plan's wall-clock floor adds each run's start-up and trace (the study's median, else a default)."""
    from types import SimpleNamespace

    from tune.search.session import FIRST_RUN_OVERHEAD_S, RUN_OVERHEAD_S, run_overhead_seconds

    def session(*attrs, device="cpu"):
        trials = [SimpleNamespace(user_attrs=a) for a in attrs]
        return SimpleNamespace(study=SimpleNamespace(get_trials=lambda deepcopy=False: trials),
                               env={"device_type": device})

    # No evidence yet: the device's default (a CPU trial forks with torch loaded; a GPU's adds its context).
    assert run_overhead_seconds(session()) == FIRST_RUN_OVERHEAD_S["cpu"] < RUN_OVERHEAD_S
    assert run_overhead_seconds(session(device="cuda")) == RUN_OVERHEAD_S
    measured = session({"startup_seconds": 5.0, "mem_predict_seconds": 2.0}, {"startup_seconds": 9.0},
                       {"status": "interrupted"})  # a run that never started says nothing
    assert run_overhead_seconds(measured) == 8.0  # median of 7 and 9


def test_the_study_says_the_threads_and_cores_its_trials_had_not_the_probes(tmp_path):
    # The device probe runs unpinned on every usable core; a trial pinned by --cores gets one thread per core of
    # its own. summary.md and the card said "2 threads per trial" of trials that ran on one.
    core = sorted(os.sched_getaffinity(0))[-1]
    out = study_module.run_study(settings(tmp_path, trials=1, cores=(core,)), target=STEADY)
    env = out.study.user_attrs["environment"]
    assert (env["cpu_threads"], env["cores"]) == (1, [core])
    assert f"| torch threads per trial | 1 (cores {core}) |" in (out.results_dir / "summary.md").read_text()
