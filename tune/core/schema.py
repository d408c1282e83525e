"""The trial record: every figure of a trial defined once, with its unit, its column and what it means.

A trial's figures live in the storage as Optuna user attributes in SI units (bytes, seconds), under the names
below. trials.csv, the tables of summary.md, the plots' axes and best.json all read them through this module:
a figure's column name, unit, rounding and description are written here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tune.core.units import MiB


@dataclass(frozen=True)
class Field:
    """One figure of the trial record."""

    name: str  # the record's key (user attribute, trials_frame column), in SI units
    column: str  # its trials.csv column, the unit in the name where it has one
    doc: str  # what it means, for the column glossary
    scale: float = 1.0  # record value / scale = the column's value (bytes / MiB = MiB)
    digits: int | None = None  # rounding in trials.csv (None: as recorded)
    label: str | None = None  # axis label / short prose name, unit included ("peak memory (MiB)")
    text: Callable[[Any], str] | None = None  # how a value that is not a number is written (a time, a dict)

    def to_column(self, values: pd.Series) -> pd.Series:
        """The record's values in this column's unit, rounded."""
        if self.text is not None:
            return values.map(lambda v: self.text(v) if v is not None and v == v else v)  # NaN, NaT: missing
        if self.scale == 1 and self.digits is None:
            return values
        out = pd.to_numeric(values, errors="coerce") / self.scale
        if self.digits == 0:
            return out.round(0).astype("Int64")  # whole numbers that may be missing: no trailing ".0"
        return out if self.digits is None else out.round(self.digits)


def _mib(name: str, column: str, doc: str, label: str | None = None) -> Field:
    return Field(name, column, doc, scale=MiB, digits=1, label=label)


def _s(name: str, column: str, doc: str, label: str | None = None) -> Field:
    return Field(name, column, doc, digits=2, label=label)


# stopped_by's values: why a run stopped at a rung below the target (tune.search.predict).
HALVING = "halving"  # successive halving: not in the best 1/eta of its rung
PREDICTION = "prediction"  # even an optimistic reading of its predicted loss at the target could not beat the best
MEDIAN = "median"  # --pruner median: worse than the median of the runs that reached its rung


# trials.csv's columns, in order. Internal bookkeeping (the tuner's own memory, process ids) is left out.
FIELDS: tuple[Field, ...] = (
    Field("trial", "trial", "the trial as every table names it: its number, 'ref PRESET', or 'confirm trial N #k'"),
    Field("number", "number", "the searched trial's number in the Optuna study (blank for references and "
                              "confirmation runs, which live in companion studies)"),
    Field("reference", "reference", "the preset a reference run trained (a hand-picked configuration run after "
                                    "the search; stopped at a rung only by the prediction, see stopped_by)"),
    Field("status", "status", "ok (trained to the target), pruned (stopped at a rung: stopped_by says why), oom, "
                              "predicted_oom (skipped: predicted over the memory limit), diverged, timeout, error, "
                              "interrupted"),
    Field("objective_value", "objective_value",
          "the figure the study ranks: validation loss at the target (objective loss) or training tokens/s "
          "(objective throughput); blank unless the run trained to the target", digits=6),
    Field("started", "started", "when the trial started (UTC)", text=lambda t: f"{t:%Y-%m-%d %H:%M:%S}"),
    _s("trial_seconds", "duration_s", "the trial's wall time: process start, data, tracing, training, evaluation",
       "trial wall time (s)"),
    Field("retry_of", "retry_of", "the trial this one repeats after an error or interruption"),
    Field("warm_start", "warm_start", "where a warm-start trial's configuration came from"),
    Field("confirm_of", "confirm_of", "the configuration a confirmation run repeats with a fresh seed"),
    Field("confirm_run", "confirm_run", "which confirmation run (1, 2, ...)"),
    Field("confirm_seed", "confirm_seed", "the confirmation run's seed"),
    Field("batch_size", "batch_size", "sequences per optimizer step", label="batch size"),
    Field("block_size", "block_size", "context length in tokens", label="block size (tokens)"),
    Field("n_embed", "n_embed", "embedding width", label="embedding width"),
    Field("n_head", "n_head", "attention heads per layer", label="attention heads"),
    Field("n_layer", "n_layer", "transformer blocks", label="layers"),
    Field("learning_rate", "learning_rate", "AdamW's peak learning rate", label="learning rate"),
    Field("n_params", "params_M", "model parameters, millions", scale=1e6, digits=3,
          label="model size (M parameters)"),
    Field("rung", "rung", "the last rung the trial reached (rungs: evaluation points up to the target)"),
    Field("rungs", "rungs", "the study's number of rungs"),
    Field("rung_loss", "rung_loss", "validation loss at the last rung reached (what a pruned trial was judged on)",
          digits=4, label="validation loss at the last rung"),
    Field("stopped_by", "stopped_by", "why a run stopped before the target: halving (not in the best 1/eta of its "
                                      "rung), median (--pruner median: worse than the rung's median) or "
                                      "prediction (even an optimistic reading of its predicted loss at the target "
                                      "could not beat the best loss at the target so far)"),
    Field("predicted_loss", "predicted_loss", "the validation loss at the target predicted at the run's latest rung "
                                              "below it: a straight line through the study's own (loss at that rung, "
                                              "loss at the target) pairs", digits=4,
          label="predicted validation loss at the target"),
    Field("predicted_sd", "predicted_sd", "the standard deviation of that prediction (its prediction interval's)",
          digits=4),
    Field("predicted_rung", "predicted_rung", "the rung the prediction was read at", digits=0),
    Field("predicted_pairs", "predicted_pairs", "trials that had reached the target when the line was fitted (its "
                                                "points)", digits=0),
    Field("incumbent_loss", "incumbent_loss", "the study's best validation loss at the target when the prediction "
                                              "was made (what the run had to beat)", digits=4),
    Field("val_loss", "val_loss", "validation loss at the end of the trial's training", digits=4,
          label="validation loss"),
    Field("train_loss", "train_loss", "training loss at the end of the trial's training", digits=4),
    Field("steps", "steps", "optimizer steps trained"),
    Field("tokens", "tokens_M", "training tokens seen, millions", scale=1e6, digits=3),
    Field("epochs", "epochs", "passes over the corpus's training split (tokens seen / training tokens): many "
                              "epochs on a small corpus rewards memorising", digits=3, label="epochs of the corpus"),
    Field("tokens_per_s", "tokens_per_s", "training tokens per second over the timed steps (warm-up and evaluation "
                                          "excluded)", digits=0, label="training tokens/s"),
    _s("train_seconds", "train_s", "timed training seconds (what a time budget counts)"),
    _s("eval_seconds", "eval_s", "seconds spent evaluating"),
    Field("eval_share", "eval_share", "evaluation's share of training + warm-up + evaluation time", digits=3),
    Field("warmup_steps", "warmup_steps", "first steps trained but not timed (allocator and kernel warm-up)"),
    _s("warmup_seconds", "warmup_s", "seconds of the warm-up steps"),
    _s("compile_seconds", "compile_s", "seconds of the steps that compiled or captured the step (torch.compile, "
                                       "CUDA graphs): outside the budget and tokens/s, like warm-up"),
    Field("compile", "compile", "the compile mode the steps ran in (none, default, graphs) and why"),
    _s("startup_seconds", "startup_s", "seconds from process start to the first step"),
    _mib("peak_memory_bytes", "peak_MiB", "the measured peak that a memory limit counts: CUDA memory reserved, "
                                          "or the CPU process's data segment", "peak memory (MiB)"),
    _mib("predicted_peak_bytes", "predicted_MiB", "the peak predicted before the trial ran (traced step x "
                                                  "calibration)", "predicted peak memory (MiB)"),
    _mib("peak_allocated_bytes", "peak_allocated_MiB", "CUDA: the most memory tensors held at once"),
    _mib("peak_reserved_bytes", "peak_reserved_MiB", "CUDA: the most memory the caching allocator held"),
    _mib("peak_rss_bytes", "peak_rss_MiB", "the trial process's peak resident memory"),
    _mib("peak_data_bytes", "peak_data_MiB", "CPU: the trial process's peak data segment (what RLIMIT_DATA counts)"),
    _mib("mem_traced_bytes", "traced_MiB", "peak tensor bytes of the step traced on fake tensors"),
    _mib("mem_resident_bytes", "resident_MiB", "traced bytes that live the whole run (weights, AdamW state)"),
    _mib("mem_large_bytes", "large_MiB", "CPU: traced transient bytes in allocations malloc maps apart"),
    _mib("mem_baseline_bytes", "baseline_MiB", "the trial process's memory before the model was built"),
    _s("mem_predict_seconds", "predict_s", "seconds spent tracing the step"),
    Field("mem_ratio", "mem_ratio", "the calibration's ratio for transient bytes when the trial was predicted",
          digits=3),
    _mib("mem_overhead_bytes", "mem_overhead_MiB", "the calibration's constant overhead when the trial was predicted"),
    _mib("mem_limit_bytes", "limit_MiB", "the memory limit the trial was judged against"),
    Field("mem_skip_margin", "skip_margin", "how far over the limit (a share of it) a prediction could be and still "
                                            "run when the trial was judged", digits=3),
    Field("mem_skip_margin_why", "skip_margin_why", "where that margin came from (the study's measured prediction "
                                                    "errors, or the default before there were enough)"),
    Field("mem_trace_error", "trace_error", "why the step could not be traced (the trial ran unpredicted)"),
    Field("mfu", "mfu", "model FLOPs utilisation: the share of the device's peak the training used (GPU)",
          digits=4),
    Field("device", "device", "the device the trial trained on"),
    Field("host", "host", "the machine"),
    Field("worker", "worker", "the worker slot: its GPU or its CPU cores"),
    Field("threads", "threads", "torch CPU threads in the trial process"),
    Field("cpu_share", "cpu_share", "CPU time the trial got / what its threads could use", digits=3),
    Field("others_cores", "others_cores", "cores other processes kept busy during the trial", digits=2),
    Field("load_1m", "load_1m", "the machine's 1-minute load average at the trial's end", digits=2),
    Field("gpu_uuid", "gpu_uuid", "the GPU's UUID"),
    Field("gpu_other_processes", "gpu_other_processes", "other processes on the trial's GPU"),
    Field("gpu_util_percent", "gpu_util_percent", "the GPU's utilisation at the trial's end"),
    Field("contended", "contended", "why the trial's timing cannot be trusted (other processes competed)"),
    Field("budget_warning", "budget_warning", "why the budget was too short for this trial to say much"),
    Field("oom_phase", "oom_phase", "where an out-of-memory trial ran out: build, forward, backward, optimizer"),
    _mib("oom_requested_bytes", "oom_requested_MiB", "the allocation that failed"),
    Field("error", "error", "the error or the reason the trial stopped"),
    Field("checkpoint", "checkpoint", "the folder of the model the trial trained (when kept)"),
    Field("config", "config", "the trial's complete gptcore config (model and train) as JSON: what "
                              "`python -m gptcore train --config` would train",
          text=lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v),
)
BY_NAME = {f.name: f for f in FIELDS}
BY_COLUMN = {f.column: f for f in FIELDS}


def field(name: str) -> Field:
    """The field of a record key."""
    return BY_NAME[name]


def label(name: str) -> str:
    """A figure's axis label / short name with its unit."""
    f = BY_NAME[name]
    return f.label or f.column.replace("_", " ")


def param_field(name: str) -> Field:
    """The column of a searched parameter: one of the six's fields above, or a field searched beside them
    (--param, a space file), as trained, unrounded like the learning rate."""
    return BY_NAME.get(name) or Field(name, name, "a field searched beside the six, as the run trained it",
                                      label=name.replace("_", " "))


def param_text(value: Any) -> str:
    """A searched field's value in a table a person reads: 0.123, 4, gelu, true ('' when missing)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    return str(value)


def csv_frame(df: pd.DataFrame, params: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """trials.csv: the record's fields as columns in their units, the searched fields beyond the six (`params`)
    after the learning rate, then the loss at every rung."""
    out = pd.DataFrame(index=df.index)
    order = [*FIELDS[:FIELDS.index(BY_NAME["learning_rate"]) + 1], *(param_field(p) for p in params),
             *FIELDS[FIELDS.index(BY_NAME["learning_rate"]) + 1:]]
    for f in order:
        values = df[f.name] if f.name in df else pd.Series([None] * len(df), index=df.index, dtype=object)
        out[f.column] = f.to_column(values)
    rungs = sorted((c for c in df.columns if c.startswith("loss_rung_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    for c in rungs:
        out[c] = df[c].round(4)
    return out


def from_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """A trials.csv read back into the record's names and SI units (older files, already in them, pass through)."""
    out = frame.copy()
    for column in frame.columns:
        f = BY_COLUMN.get(column)
        if f is None or f.column == f.name:
            continue
        values = pd.to_numeric(frame[column], errors="coerce") * f.scale if f.scale != 1 else frame[column]
        out = out.drop(columns=column).assign(**{f.name: values})
    return out


def glossary(params: tuple[str, ...] | list[str] = ()) -> list[str]:
    """summary.md's table of trials.csv's columns and what each means (`params`: the fields searched beside the
    six)."""
    lines = ["| column | meaning |", "| --- | --- |"]
    lines += [f"| `{f.column}` | {f.doc} |" for f in FIELDS]
    lines += [f"| `{p}` | {param_field(p).doc} (a reference: what a trial trains without the search) |"
              for p in params]
    lines.append("| `loss_rung_K` | validation loss at rung K |")
    return lines


def whole(values: Any) -> Any:
    """A figure as a whole number with thousands separators, blank when missing."""
    return f"{values:,.0f}" if values is not None and pd.notna(values) else ""
