"""The recorded learning curves the tuner replay runs against: how they are recorded, exported and looked up.

`python -m benchmarks tuner record` runs the tuner itself (random search, no pruning, every trial reporting at
every rung up to the target) and keeps, per configuration, what a study would have seen: the validation loss at
each rung, the final status, tokens/s, steps, peak memory and the seconds each part took. The table ships in
benchmarks/data/ (CSV + a JSON of how and where it was recorded), so anyone can replay studies in minutes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gptcore.corpus import DEFAULT_CORPUS
from gptcore.errors import UserError
from gptcore.files import check_output_dir, read_json_object
from tune.core.budget import Budget
from tune.core.outcomes import Status
from tune.core.space import PARAMS, POW2, Space

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_TABLE = DATA / "tuner_small.csv"  # the shipped table the replay reads (and docs/tuner-strategies.md cites)
RECORDED_TABLE = Path("results/bench/tuner_table.csv")  # where `record` writes: never over the shipped evidence
CORPUS = DEFAULT_CORPUS
# What a replay needs per configuration; the rung losses (loss_rung_1..n) come after these.
KEEP = ["number", "status", *PARAMS, "val_loss", "tokens_per_s", "steps", "train_seconds", "eval_seconds",
        "warmup_seconds", "startup_seconds", "trial_seconds", "peak_memory_bytes", "n_params", "threads"]
# Statuses of runs that say something about the configuration (error / interrupted runs say nothing) and ran (a
# predicted OOM never did): tune.core.outcomes.Status's traits, not a list of its strings.
OUTCOMES = tuple(s.value for s in Status if s.counted and s is not Status.PREDICTED_OOM)


@dataclass(frozen=True)
class RecordSettings:
    """What `benchmarks tuner record` runs: the tuner, random search, no pruning, every rung reported."""

    trials: int = 200
    budget: str = "12s"
    rungs: int = 3
    reduction_factor: int = 3  # the table replays plans of this factor only (its rungs are target / factor**k)
    workers: int = 2
    seed: int = 10
    data: Path = CORPUS
    results: Path = Path("results/tuner-record")
    out: Path = RECORDED_TABLE
    space: str = "auto"  # the tuner's --space: a named space or a JSON file of ranges


def record_command(s: RecordSettings) -> list[str]:
    """The `python -m tune` command line that records the curves (random search: every region equally likely)."""
    return [sys.executable, "-m", "tune", "--sampler", "random", "--pruner", "none", "--references", "none",
            "--budget", s.budget, "--rungs", str(s.rungs), "--reduction-factor", str(s.reduction_factor),
            "--trials", str(s.trials), "--workers", str(s.workers),
            "--seed", str(s.seed), "--confirm", "0", "--no-save-models", "--study-name", "tuner-record",
            "--results", str(s.results), "--data", str(s.data), "--space", str(s.space), "--no-progress"]


def record(s: RecordSettings, quiet: bool = False) -> Path:
    """Run (or resume) the recording study, then write the table and its description to `s.out`.

    quiet: the study's own output (its per-trial lines) is dropped; its warnings and errors still show.
    """
    check_out(s.out)
    s.out.parent.mkdir(parents=True, exist_ok=True)
    command = record_command(s)
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL if quiet else None)
    if done.returncode != 0:
        raise UserError(f"the recording study stopped (exit {done.returncode}); run the same command again to "
                        f"resume it")
    return export(s.results / "tuner-record", s.out, command=" ".join(command[1:]))


def check_out(out: Path) -> None:
    """The table's folder must exist (or be creatable) and be writable before hours of recording."""
    if out.suffix != ".csv":
        raise UserError(f"--table {out}: expected a .csv file name")
    try:
        check_output_dir(out.parent, "folder")
    except UserError as exc:
        raise UserError(f"--table {exc}") from None


def export(study_folder: Path, out: Path, command: str) -> Path:
    """The recording study's curves as a CSV (+ JSON of how they were recorded), from its storage alone."""
    import optuna

    from gptcore.files import atomic_write_text
    from tune.report.frame import flagged, trials_frame

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(study_folder / 'study.db').resolve()}"
    try:
        study = optuna.load_study(study_name=study_folder.name, storage=storage)
    except KeyError:
        raise UserError(f"{study_folder}: no recorded study there") from None
    df = trials_frame(study)
    settings, env = study.user_attrs["settings"], study.user_attrs["environment"]
    rung_cols = [f"loss_rung_{k}" for k in range(1, len(settings["rungs"]) + 1)]
    keep = df["status"].isin(OUTCOMES) & df["confirm_of"].isna()  # one run per configuration: no confirmations
    table = df.loc[keep, KEEP + rung_cols].round(6).sort_values("number")
    # Kept, and counted in the description: a contended run's speed (and so its loss in a time budget) is low.
    table["contended"] = flagged(df.loc[keep, "contended"]).to_numpy()
    meta = {
        "command": f"python -m benchmarks tuner record (runs: python {command})",
        "recorded": str(max((t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete),
                            default=None)).split(".")[0], "device": env["device_name"],
        "threads_per_trial": int(df["threads"].dropna().median()) if df["threads"].notna().any() else None,
        "torch": env.get("torch"), "optuna": optuna.__version__,
        "budget_amount": settings["budget_amount"], "budget_unit": settings["budget_unit"],
        "rungs": settings["rungs"], "eta": settings["reduction_factor"],
        "schedule": settings["schedule"], "space": settings["space"], "corpus": Path(settings["corpus"]).name,
        "rows": len(table), "contended_rows": int(table["contended"].sum()),
        "left_out_error_or_interrupted": int((~keep).sum()),
    }
    atomic_write_text(out, table.to_csv(index=False))
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    if meta["contended_rows"]:
        print(f"warning: {meta['contended_rows']} recorded trial(s) ran beside a busy neighbour (column `contended`): "
              f"their speed, and so their loss in a time budget, is too low. Record on a quiet machine.")
    return out


@dataclass(frozen=True)
class Table:
    """Recorded curves and how they were recorded; `nearest` maps a proposed configuration to a recorded one."""

    frame: pd.DataFrame
    meta: dict[str, Any]
    space: Space
    points: np.ndarray  # (rows, 6): each configuration in the unit cube of the space (log scales), for lookups
    rows: tuple[dict[str, Any], ...]  # the frame's rows as dicts, made once: every replayed trial reads one

    @property
    def fractions(self) -> tuple[float, ...]:
        """The recorded rungs, as fractions of the target budget."""
        return tuple(self.meta["rungs"])

    @property
    def budget(self) -> Budget:
        """The target every recorded trial trained towards."""
        return Budget(self.meta["budget_amount"], self.meta["budget_unit"])

    @property
    def run_seconds(self) -> float:
        """The clock's unit: the target for a time budget, else the median seconds of a run to the target."""
        if self.budget.seconds:
            return self.budget.seconds
        return float(self.frame.loc[self.frame["status"] == "ok", "trial_seconds"].median())

    @property
    def best(self) -> float:
        """The lowest validation loss at the target of any recorded configuration: regret is measured from it."""
        return float(self.frame.loc[self.frame["status"] == "ok", "val_loss"].min())

    def rung_column(self, fraction: float) -> str:
        """The column holding the loss at `fraction` of the target; a one-line error for a rung not recorded."""
        for k, f in enumerate(self.fractions, start=1):
            if math.isclose(f, fraction, rel_tol=1e-6):
                return f"loss_rung_{k}"
        raise UserError(f"a rung at {fraction:.3g} of the target, but the table recorded rungs at "
                        f"{', '.join(f'{f:.3g}' for f in self.fractions)} only")

    def nearest(self, values: dict[str, Any]) -> int:
        """Row position of the recorded configuration nearest to `values` (Euclidean in the unit cube)."""
        d = ((self.points - unit_point(values, self.space)) ** 2).sum(axis=1)
        return int(np.argmin(d))


def unit_point(values: dict[str, Any], space: Space) -> np.ndarray:
    """The six values scaled to [0, 1] the way the sampler sees them (powers of two and lr on log scales)."""
    out = []
    for name in PARAMS:
        lo, hi = getattr(space, name)
        v = values[name]
        if name in POW2 or name == "learning_rate":
            v, lo, hi = math.log(v), math.log(lo), math.log(hi)
        out.append(0.0 if hi == lo else (v - lo) / (hi - lo))
    return np.array(out)


def load_table(path: Path) -> Table:
    """Read a recorded table and its JSON description; one-line errors for a missing or malformed one."""
    meta_path = path.with_suffix(".json")
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise UserError(f"--table {path}: {exc.filename} does not exist (record one with "
                        f"`python -m benchmarks tuner record`)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"--table {path}: unreadable ({exc})") from None
    meta = read_json_object(meta_path, "a recorded table's description", flag="--table",
                            missing="does not exist (record one with `python -m benchmarks tuner record`)")
    needed = [*KEEP, *(f"loss_rung_{k}" for k in range(1, len(meta.get("rungs", [])) + 1))]
    missing = [c for c in needed if c not in frame.columns]
    wanted = ("rungs", "space", "eta", "budget_amount", "budget_unit")
    if missing or any(k not in meta for k in wanted) or frame.empty:
        absent = missing or [k for k in wanted if k not in meta] or ["rows"]
        raise UserError(f"--table {path}: not a recorded tuner table (missing {', '.join(absent)})")
    space = Space(**{k: tuple(v) for k, v in meta["space"].items()})
    points = np.stack([unit_point(row, space) for row in frame[list(PARAMS)].to_dict("records")])
    frame = frame.reset_index(drop=True)
    return Table(frame, meta, space, points, tuple(frame.to_dict("records")))
