"""--log-to tensorboard|mlflow: every finished run (searched trial, reference, confirmation run) logged as one run of
those tools, with its parameters, its curve and how it ended, in local files under the study's results folder.

Written by the tuner's parent once a run has ended, from the curve its trial process wrote (gptcore.curve): the
parent never imports torch, so not torch.utils.tensorboard (which imports torch) but the `tensorboard` package's own
event-file writer and hparams summaries (numpy and protobuf only); MLflow through its client, into a SQLite file
(MLflow 3 refuses its old file store unless told otherwise, and SQLite is the local store it recommends). Both
libraries are optional extras, imported only when their flag is given; a missing one is refused before the study
starts. A tracker that fails to log a run is a warning: the study goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcore.curve import CurvePoint, curve_path, read_curve
from gptcore.errors import UserError
from gptcore.files import atomic_dir

# Each tracker, the modules it needs and the extra that installs them (pyproject.toml's optional dependencies).
NEEDS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
TRACKERS = tuple(NEEDS)
TB_FOLDER, TB_MARKER = "tensorboard", "run.json"  # results/<study>/tensorboard/<run>/ holds run.json + events
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"
# The curve's columns as each tool names its series (the step is the x axis of both).
SERIES = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr", "tokens_per_s": "tokens_per_s",
          "train_seconds": "train_seconds", "tokens": "tokens"}
# How our outcomes end an MLflow run (its statuses are FINISHED, FAILED and KILLED).
MLFLOW_END = {"ok": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}


def parse_log_to(text: str) -> list[str]:
    """--log-to's value: a comma-separated list of trackers."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in NEEDS]
    if not names or bad:
        raise UserError(f"--log-to {text!r}: expected {' or '.join(TRACKERS)} (or both, comma-separated)")
    return names


def check_available(trackers: tuple[str, ...] | list[str]) -> None:
    """Refuse, before anything is created, a tracker whose package is not installed (without importing it)."""
    for name in trackers:
        missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--log-to {name}: {' and '.join(missing)} not installed; "
                            f"pip install 'gptcore-tune[{name}]'")


@dataclass
class TrackedRun:
    """One finished run as the trackers log it."""

    study: str
    name: str  # trial_0003, ref_baby, confirm_trial_0003_1: the run's log name
    params: dict[str, Any]  # its hyperparameters (the searched ones, or the preset's) and seed
    status: str  # tune.core.outcomes.Status value
    curve: list[CurvePoint]
    final: dict[str, float | None] = field(default_factory=dict)  # val_loss, tokens_per_s at its end
    tags: dict[str, str] = field(default_factory=dict)  # trial number, reference, confirmation of ...


def tracked_run(study: str, name: str, log: str | Path, params: dict[str, Any], status: str,
                final: dict[str, Any], tags: dict[str, Any]) -> TrackedRun:
    """A run from its record's figures and the curve beside its log (a curve that cannot be read: none)."""
    try:
        curve = read_curve(curve_path(log))
    except (OSError, ValueError):  # the run is still logged, with its parameters and end
        curve = []
    plain = {k: v for k, v in params.items() if isinstance(v, str | int | float | bool)}
    return TrackedRun(study, name, plain, status, curve, {k: _finite(v) for k, v in final.items()},
                      {k: str(v) for k, v in tags.items() if v is not None})


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class Trackers:
    """The study's trackers, opened once (their folders created); log() is safe from several worker threads."""

    def __init__(self, names: tuple[str, ...] | list[str], results_dir: Path, study: str) -> None:
        self.results_dir, self.study = Path(results_dir), study
        self._lock = threading.Lock()
        self._writers = []
        for name in names:
            try:
                self._writers.append(TensorBoard(self.results_dir) if name == "tensorboard"
                                     else MLflow(self.results_dir, study))
            except Exception as exc:  # a corrupt mlflow.db, a folder that cannot be written: said in one line
                raise UserError(f"--log-to {name}: cannot open its files in {self.results_dir} "
                                f"({type(exc).__name__}: {_first_line(exc)})") from None

    def log(self, run: TrackedRun) -> list[str]:
        """Log one run to every tracker; a warning line for each that failed (the others still log)."""
        warnings = []
        with self._lock:
            for writer in self._writers:
                try:
                    writer.log(run)
                except Exception as exc:  # a full disk, a locked database: the study's own records are safe
                    warnings.append(f"--log-to {writer.name}: {run.name} not logged ({type(exc).__name__}: "
                                    f"{_first_line(exc)})")
        return warnings


class TensorBoard:
    """results/<study>/tensorboard/<run>/: one event file per run, the curve as scalars by step, the parameters as
    the HParams dashboard's session; written into a fresh folder and swapped in whole (a kill leaves the old run
    or the new one), so a run logged again replaces its earlier self."""

    name = "tensorboard"

    def __init__(self, results_dir: Path) -> None:
        self.root = results_dir / TB_FOLDER
        self.root.mkdir(parents=True, exist_ok=True)

    def log(self, run: TrackedRun) -> None:
        """Write the run's events."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        # Wall times as the run spent them: TensorBoard's "relative" axis then reads in training seconds.
        end = time.time()
        start = end - (run.curve[-1].train_seconds if run.curve else 0.0)
        with atomic_dir(self.root / run.name, TB_MARKER, "TensorBoard run") as tmp:
            (tmp / TB_MARKER).write_text(json.dumps({"study": run.study, "run": run.name, "status": run.status,
                                                     "params": run.params, **run.tags}, indent=1) + "\n")
            writer = EventFileWriter(str(tmp))
            try:
                writer.add_event(event_pb2.Event(wall_time=start, summary=hp.hparams_pb(
                    {**run.params, "status": run.status}, trial_id=f"{run.study}/{run.name}",
                    start_time_secs=int(start))))
                for p in run.curve:
                    values = [summary_pb2.Summary.Value(tag=SERIES[k], simple_value=float(v))
                              for k, v in _series(p)]
                    writer.add_event(event_pb2.Event(wall_time=start + p.train_seconds, step=p.step,
                                                     summary=summary_pb2.Summary(value=values)))
                last = run.curve[-1].step if run.curve else 0
                final = [summary_pb2.Summary.Value(tag=f"result/{k}", simple_value=v)
                         for k, v in run.final.items() if v is not None]
                if final:
                    writer.add_event(event_pb2.Event(wall_time=end, step=last,
                                                     summary=summary_pb2.Summary(value=final)))
            finally:
                writer.close()


def _series(p: CurvePoint) -> Iterator[tuple[str, float]]:
    """A point's measured values, by curve column (the empty ones left out)."""
    for key in SERIES:
        value = getattr(p, key)
        if value is not None:
            yield key, value


class MLflow:
    """results/<study>/mlflow.db (tracking) and mlartifacts/: the study is an experiment, each run a run named as its
    log, with its parameters, its curve as metric histories by step, its end as its status; a run logged again
    replaces (deletes) the earlier run of that name. Open with `mlflow ui --backend-store-uri sqlite:///...`."""

    name = "mlflow"

    def __init__(self, results_dir: Path, study: str) -> None:
        results_dir.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{(results_dir / MLFLOW_DB).absolute()}"
        from mlflow import MlflowClient  # first: importing mlflow sets its loggers' levels

        with _quiet_mlflow():
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment = self._experiment(study, (results_dir / MLFLOW_ARTIFACTS).absolute().as_uri())

    def _experiment(self, study: str, artifacts: str) -> str:
        """The study's experiment id (created, with its artifacts beside the database, the first time)."""
        found = self.client.get_experiment_by_name(study)
        if found is None:
            try:
                return self.client.create_experiment(study, artifact_location=artifacts)
            except Exception:  # another tuner on this study created it meanwhile
                found = self.client.get_experiment_by_name(study)
                if found is None:
                    raise
        return found.experiment_id

    def log(self, run: TrackedRun) -> None:
        """Log the run (after deleting an earlier run of the same name)."""
        from mlflow.entities import Metric, Param

        with _quiet_mlflow():
            client = self.client
            for old in client.search_runs([self.experiment], filter_string=f"tags.`tune.run` = '{run.name}'"):
                client.delete_run(old.info.run_id)
            end_ms = int(time.time() * 1000)
            start_ms = end_ms - int(1000 * (run.curve[-1].train_seconds if run.curve else 0.0))
            tags = {"tune.study": run.study, "tune.run": run.name, "tune.status": run.status,
                    **{f"tune.{k}": v for k, v in run.tags.items()}}
            made = client.create_run(self.experiment, start_time=start_ms, run_name=run.name, tags=tags)
            run_id = made.info.run_id
            metrics = [Metric(SERIES[k], float(v), start_ms + int(1000 * p.train_seconds), p.step)
                       for p in run.curve for k, v in _series(p)]
            last = run.curve[-1].step if run.curve else 0
            metrics += [Metric(f"result/{k}", v, end_ms, last) for k, v in run.final.items() if v is not None]
            params = [Param(k, str(v)) for k, v in run.params.items()]
            # log_batch takes at most 100 parameters and 1000 metrics a call.
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            client.set_terminated(run_id, MLFLOW_END.get(run.status, "FAILED"), end_time=end_ms)


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines (creating its tables) off the tuner's console while it works."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
