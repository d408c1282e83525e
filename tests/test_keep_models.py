"""--keep-models K: only the best K trained models stay besides best-model/, pruned safely while the study runs
(tune.report.keep). Trials "train" at once (tests/tune_keep_target.py) but save real checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from gptcore.checkpoint import load_checkpoint
from gptcore.errors import UserError
from tests.conftest import CORPUS, ROOT, run_cli
from tests.test_tune import TINY_SPACE
from tune.core.budget import Budget
from tune.report import keep
from tune.report.frame import choose_winner, trials_frame
from tune.report.outputs import write_report
from tune.search.settings import DEFAULT_KEEP_MODELS, TuneSettings
from tune.search.study import run_study
from tune.store.load import load_study

INSTANT, CROSSING = "tests.tune_keep_target:instant", "tests.tune_keep_target:crossing"


def settings(tmp_path, **kw) -> TuneSettings:
    """A tiny study of 30-step trials that train at once and keep their models."""
    base = dict(trials=5, budget=Budget(30, "steps"), references=(), data=CORPUS, device="cpu",
                results=tmp_path / "results", study_name="k", space_overrides=TINY_SPACE, progress=False, seed=0,
                confirm=0, save_models=True)
    return TuneSettings.of(**{**base, **kw})


def models_in(folder: Path) -> list[str]:
    """The checkpoint folders a study's folder holds (no trash, no atomic-write leftovers)."""
    root = folder / "checkpoints"
    return sorted(e for e in os.listdir(root) if not e.startswith(".")) if root.is_dir() else []


def best_labels(study: optuna.Study, k: int) -> list[str]:
    """The labels of the k lowest losses among the trials that trained to the target, best first."""
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    return [f"trial_{t.number:04d}" for t in done[:k]]


def holder_of(best_model: Path) -> str:
    """The label of the run whose model best-model/ holds (its state.json names the run's log)."""
    return Path(json.loads((best_model / "state.json").read_text())["tuner"]["log"]).stem


def test_the_best_k_models_stay_best_model_is_the_winner_and_summary_says_the_disk(tmp_path):
    out = run_study(settings(tmp_path, keep_models=2), target=INSTANT)
    folder = out.results_dir
    assert len(out.study.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert models_in(folder) == sorted(best_labels(out.study, 2))
    winner = choose_winner(trials_frame(out.study), out.study.user_attrs["settings"])
    assert holder_of(folder / "best-model") == Path(winner.row["checkpoint"]).name
    load_checkpoint(folder / "best-model")  # complete and loadable
    summary = (folder / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("- disk:"))
    assert "3 model folder(s)" in line and "--keep-models 2" in line  # 2 checkpoints + best-model/
    shown = float(line.split("holds ")[1].split(" MiB")[0].replace(",", ""))
    assert shown == pytest.approx(keep.disk_used(folder) / 2**20, abs=0.2)  # summary.md itself is written after


def test_zero_keeps_only_best_model_even_through_confirmation_and_a_report_after_says_nothing_is_missing(tmp_path):
    out = run_study(settings(tmp_path, trials=4, keep_models=0, confirm=2), target=CROSSING)
    folder = out.results_dir
    df = trials_frame(out.study)
    assert df["confirm_of"].notna().sum() == 4  # both confirmations ran
    assert models_in(folder) == []
    winner = choose_winner(df, out.study.user_attrs["settings"])
    # The best mean is the second single run: its model had to stay through the study and its confirmation.
    assert Path(winner.row["checkpoint"]).name == best_labels(out.study, 2)[1]
    assert holder_of(folder / "best-model") == Path(winner.row["checkpoint"]).name
    load_checkpoint(folder / "best-model")
    # `python -m tune report` later: the winner's checkpoint is gone, best-model/ holds it: no note, no copy.
    before = os.stat(folder / "best-model" / "state.json").st_mtime_ns
    write_report(load_study("k", results=tmp_path / "results").study, folder, plots=False)
    assert "best-model/: not written" not in (folder / "summary.md").read_text()
    assert os.stat(folder / "best-model" / "state.json").st_mtime_ns == before


def _study(trials: list[tuple[TrialState, float | None]], refs: list[tuple[TrialState, float | None, str]] = ()):
    """An in-memory study (and references) with these (state, value[, preset]) trials, in order."""
    study = optuna.create_study(direction="minimize")
    for state, value in trials:
        study.add_trial(create_trial(state=state, value=value) if state == TrialState.COMPLETE
                        else create_trial(state=state))
    ref = optuna.create_study(direction="minimize")
    for state, value, preset in refs:
        kw = {"value": value} if state == TrialState.COMPLETE else {}
        ref.add_trial(create_trial(state=state, user_attrs={"reference": preset}, **kw))
    return study, ref


def test_only_finished_runs_outside_the_best_k_are_prunable_never_one_an_attempt_may_still_write():
    study, refs = _study(
        [(TrialState.COMPLETE, 3.0), (TrialState.COMPLETE, 1.0), (TrialState.RUNNING, None),
         (TrialState.COMPLETE, 2.0), (TrialState.FAIL, None), (TrialState.COMPLETE, 4.0)],
        [(TrialState.COMPLETE, 1.5, "baby"), (TrialState.FAIL, None, "course-default"),
         (TrialState.RUNNING, None, "course-default")])  # a retry of course-default writes ref_course-default
    assert keep.ranked(study, refs) == ["trial_0001", "ref_baby", "trial_0003", "trial_0000", "trial_0005"]
    assert keep.prunable(study, refs, 2) == ["trial_0000", "trial_0003", "trial_0004", "trial_0005"]
    assert keep.prunable(study, refs, 0) == ["ref_baby", "trial_0000", "trial_0001", "trial_0003", "trial_0004",
                                             "trial_0005"]


def test_a_prune_waits_while_another_process_copies_best_model(tmp_path):
    study, _ = _study([(TrialState.COMPLETE, 1.0), (TrialState.COMPLETE, 2.0)])
    (tmp_path / "checkpoints" / "trial_0001").mkdir(parents=True)
    with keep.checkpoints_lock(tmp_path):  # what write_report holds while it copies best-model/
        pruning = threading.Thread(target=keep.prune, args=(tmp_path, study, None, 1))
        pruning.start()
        pruning.join(0.5)
        assert pruning.is_alive() and (tmp_path / "checkpoints" / "trial_0001").is_dir()
    pruning.join()
    assert models_in(tmp_path) == [] and os.listdir(tmp_path / "checkpoints") == []  # trash emptied too


def test_a_kill_between_rename_and_delete_leaves_a_loadable_state(tmp_path):
    out = run_study(settings(tmp_path, trials=3, keep_models=3), target=INSTANT)
    folder = out.results_dir
    assert len(models_in(folder)) == 3
    best = best_labels(out.study, 1)
    # A prune to the best 1, killed (SIGKILL) right after its first rename to the trash.
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import gptcore.files as files
        from tune.report import keep
        from tune.store.load import load_study
        files.fault_hook = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == "keep:renamed" else None
        study = load_study("k", results=Path({str(tmp_path / "results")!r})).study
        keep.prune(Path({str(folder)!r}), study, None, 1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    trash = [e for e in os.listdir(folder / "checkpoints") if e.startswith(keep.TRASH_PREFIX)]
    assert len(trash) == 1 and len(models_in(folder)) == 2  # one checkpoint gone at once, none half there
    for label in models_in(folder):
        load_checkpoint(folder / "checkpoints" / label)
    # The next run finishes the prune and empties the trash; the report copies the winner from what is left.
    again = run_study(settings(tmp_path, trials=3, keep_models=1), target=INSTANT)
    assert models_in(folder) == best and not any(e.startswith(".pruned") for e in os.listdir(folder / "checkpoints"))
    assert again.ran == 0 and holder_of(folder / "best-model") == best[0]
    load_checkpoint(folder / "best-model")


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_bad_keep_models_is_one_line_and_exit_2(tmp_path, capfd, value):
    code, _, err = run_cli("tune", ["--keep-models", value, "--results", str(tmp_path / "r")], capfd)
    assert code == 2 and "--keep-models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_settings_refuse_a_negative_keep_models_and_the_default_is_small():
    from tune.search.session import check_flags

    with pytest.raises(UserError, match="--keep-models must be an integer >= 0"):
        check_flags(TuneSettings.of(keep_models=-1))
    assert 0 < DEFAULT_KEEP_MODELS <= 5
