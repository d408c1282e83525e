"""Curves per trial and --log-to tensorboard|mlflow, checked by reading back what each library wrote with that
library's own reader (TensorBoard's EventAccumulator, MLflow's client), against what the trials reported."""

import json
import math
import os
import subprocess
import sys

import optuna
import pytest

from gptcore.curve import CurvePoint, curve_path, read_curve
from gptcore.errors import UserError
from tests.conftest import CORPUS, ROOT, run_cli
from tests.test_tune import TINY_SPACE, settings
from tune.report import tracking
from tune.report.tracking import TrackedRun, Trackers
from tune.store.storage import load_confirms, load_references

# The study the fixture runs, in a process of its own that checks, at its end, that it never imported torch.
STUDY_SCRIPT = f"""
import sys
from pathlib import Path
from tune.core.budget import Budget
from tune.search.settings import TuneSettings
from tune.search.study import run_study

if __name__ == "__main__":
    space = {TINY_SPACE!r}
    run_study(TuneSettings.of(trials=1, references=("tiny",), confirm=1, confirm_rule="all",
                              log_to=("tensorboard", "mlflow"),
                              budget=Budget(0.5, "s"), device="cpu", results=Path(sys.argv[1]) / "results",
                              study_name="t", data=Path(sys.argv[2]), space_overrides=space, progress=False,
                              seed=1))
    assert "torch" not in sys.modules, "the tuner's parent imported torch"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny real study (a trial, a reference, two confirmation runs) logged to both trackers."""
    tmp = tmp_path_factory.mktemp("tracked")
    script = tmp / "study.py"
    script.write_text(STUDY_SCRIPT)
    # This checkout's packages, in the tuner and in its trial processes, whatever else is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), str(tmp), str(CORPUS)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp / "results" / "t"
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}")
    main = optuna.load_study(study_name="t", storage=storage)
    runs = {}  # log name -> (its record, its Optuna trial)
    for t in main.get_trials():
        runs[f"trial_{t.number:04d}"] = t
    for t in load_references(main).get_trials():
        runs[f"ref_{t.user_attrs['reference']}"] = t
    for t in load_confirms(main).get_trials():  # confirm_of: 'trial 3' -> trial_0003, 'ref tiny' -> ref_tiny
        kind, _, what = t.user_attrs["confirm_of"].partition(" ")
        of = f"trial_{int(what):04d}" if kind == "trial" else f"ref_{what}"
        runs[f"confirm_{of}_{t.user_attrs['confirm_run']}"] = t
    return folder, runs


def test_every_run_writes_its_curve_with_the_val_losses_it_reported(study):
    folder, runs = study
    assert {"trial_0000", "ref_tiny"} <= set(runs) and sum(n.startswith("confirm_") for n in runs) == 2
    for name, trial in runs.items():
        points = read_curve(curve_path(folder / "logs" / f"{name}.log"))
        evaluations = [p for p in points if p.val_loss is not None]
        assert evaluations, name
        # The curve's last evaluation is the figure the run reported at its end, to the last bit.
        assert evaluations[-1].val_loss == trial.user_attrs["val_loss"], name
        assert evaluations[-1].step == trial.user_attrs["steps"], name
        # A searched trial's rungs: each report to Optuna is a validation loss of the curve.
        if name.startswith("trial_"):
            assert set(trial.intermediate_values.values()) <= {p.val_loss for p in evaluations}, name
        assert [p.step for p in points] == sorted({p.step for p in points}), name  # one point per step, in order


def test_summary_links_the_curves_plot_it_wrote(study):
    folder, _ = study
    summary = (folder / "summary.md").read_text()
    assert "![curves.png](curves.png)" in summary
    png = folder / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_reads_back_each_run_its_curve_and_parameters(study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder, runs = study
    assert sorted(p.name for p in (folder / "tensorboard").iterdir()) == sorted(runs)
    for name, trial in runs.items():
        points = read_curve(curve_path(folder / "logs" / f"{name}.log"))
        acc = EventAccumulator(str(folder / "tensorboard" / name))
        acc.Reload()
        val = [(e.step, e.value) for e in acc.Scalars("loss/val")]
        # TensorBoard keeps float32: equal to the curve's at float32 precision.
        assert [s for s, _ in val] == [p.step for p in points if p.val_loss is not None], name
        assert all(math.isclose(v, p.val_loss, rel_tol=1e-6)
                   for (_, v), p in zip(val, [p for p in points if p.val_loss is not None])), name
        assert len(acc.Scalars("loss/train")) == sum(p.train_loss is not None for p in points)
        assert [e.value for e in acc.Scalars("lr")] == pytest.approx([p.lr for p in points], rel=1e-6)
        assert acc.Scalars("result/val_loss")[0].value == pytest.approx(trial.user_attrs["val_loss"], rel=1e-6)
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["learning_rate"].number_value == pytest.approx(trial.user_attrs["learning_rate"])
        assert hparams["status"].string_value == trial.user_attrs["status"]


def test_mlflow_reads_back_each_run_its_parameters_curve_and_end(study):
    from mlflow import MlflowClient

    folder, runs = study
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(found) == sorted(runs)
    for name, trial in runs.items():
        run = found[name]
        points = read_curve(curve_path(folder / "logs" / f"{name}.log"))
        assert run.data.params["batch_size"] == str(trial.user_attrs["batch_size"])
        assert float(run.data.params["learning_rate"]) == trial.user_attrs["learning_rate"]
        assert run.data.tags["tune.status"] == trial.user_attrs["status"]
        assert run.info.status == "FINISHED"  # every run of this study trained to its target or a rung
        history = sorted(client.get_metric_history(run.info.run_id, "loss/val"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(p.step, p.val_loss) for p in points if p.val_loss is not None]
        assert run.data.metrics["result/val_loss"] == trial.user_attrs["val_loss"]
    assert experiment.artifact_location.startswith((folder / "mlartifacts").as_uri())


def _run(name="trial_0007", val=2.5):
    points = [CurvePoint(10, 640, 0.1, 4.0, None, 1e-3, 6400.0), CurvePoint(20, 1280, 0.2, 3.0, val, 5e-4, 6400.0)]
    return TrackedRun("s", name, {"learning_rate": 1e-3, "n_layer": 2}, "ok", points, {"val_loss": val}, {"trial": "7"})


def test_a_run_logged_again_replaces_its_earlier_self(tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trackers = Trackers(["tensorboard", "mlflow"], tmp_path, "s")
    assert trackers.log(_run(val=2.5)) == [] and trackers.log(_run(val=2.25)) == []
    run_dir = tmp_path / "tensorboard" / "trial_0007"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss/val")] == [2.25]
    assert json.loads((run_dir / "run.json").read_text())["params"] == {"learning_rate": 1e-3, "n_layer": 2}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    active = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert [r.data.metrics["loss/val"] for r in active] == [2.25]


def test_a_tracker_that_fails_is_a_warning_and_the_others_still_log(tmp_path, monkeypatch):
    trackers = Trackers(["tensorboard", "mlflow"], tmp_path, "s")

    def full(self, run):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoard, "log", full)
    warnings = trackers.log(_run())
    assert warnings == ["--log-to tensorboard: trial_0007 not logged (OSError: [Errno 28] No space left on device)"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("s").experiment_id])) == 1


def test_log_to_takes_a_comma_list_and_refuses_an_unknown_tracker():
    assert tracking.parse_log_to("tensorboard, MLflow") == ["tensorboard", "mlflow"]
    assert tracking.parse_log_to("tensorboard,") == ["tensorboard"]  # a trailing comma names nothing more
    for bad in ("wandb", "", ","):
        with pytest.raises(UserError, match="expected tensorboard or mlflow"):
            tracking.parse_log_to(bad)


def test_a_bad_log_to_is_one_line_and_exit_2(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("tune", ["--trials", "1", "--device", "cpu", "--results", str(tmp_path / "r"),
                                    "--log-to", "tensorboard", "--log-to", "wandb"], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--log-to" in err and "expected tensorboard or mlflow" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("tracker, module", [("tensorboard", "tensorboard"), ("mlflow", "sqlalchemy")])
def test_a_missing_extra_is_refused_at_start_naming_the_install(tracker, module, tmp_path, capfd, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("tune", ["--trials", "1", "--device", "cpu", "--results", str(tmp_path / "r"),
                                    "--log-to", f"{tracker}"], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"pip install 'gptcore-tune[{tracker}]'" in err and module in err
    assert not (tmp_path / "r").exists()  # refused before anything was created


def test_a_study_file_and_the_flag_may_both_name_trackers(tmp_path):
    from tune.__main__ import build_parser, settings_from_args
    from tune.core import studyfile

    toml = tmp_path / "study.toml"
    toml.write_text('log-to = ["mlflow"]\n')
    args = studyfile.parse_args(build_parser(), ["--config", str(toml), "--log-to", "tensorboard,mlflow"])
    assert settings_from_args(args).output.log_to == ("mlflow", "tensorboard")


def test_settings_default_to_no_tracker(tmp_path):
    assert settings(tmp_path).output.log_to == ()
