"""python -m tune max-batch: the largest batch that trains at each block size under a memory limit, with a margin.

Per block size: the analytic estimate (gptcore.memory.estimate_step) brackets the frontier, the traced step
(gptcore.memtrace, in trace-only probes) and the calibration learnt from the real probes (gptcore.memory.
Calibration) predict it, and real probes confirm it by bisection. A real probe trains --steps full optimizer steps
in its own process under the memory limit (tune.exec.runner), so an out-of-memory is an outcome, never a crash here.
A batch counts when it trains without running out of memory and its measured peak (tune.exec.record.measured_peak)
stays within (1 - margin) x the limit: room for what a long run adds later (allocator growth, fragmentation).

Runs in the tuner's parent, which never imports torch: every torch call happens in a probe process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptcore.config import ModelConfig, TrainConfig
from gptcore.errors import UserError
from gptcore.files import atomic_write_text, check_output_dir
from gptcore.memory import Calibration, estimate_step
from tune.core.outcomes import Status
from tune.exec.protocol import TrialJob
from tune.exec.record import measured_peak
from tune.exec.runner import TrialRunner
from tune.memory.judge import MiB

MAX_BATCH = 2**20  # no search goes past this batch: a bound, so that the search always ends
MAX_PROBES = 16  # real probes per block size, at most (typically 3 to 6)
# The prediction placed this many probes in a row one past a bound without ending the search: it keeps missing,
# so the next probe halves the bracket instead (or doubles the batch while nothing has failed yet).
EDGE_STEPS = 2
SLOPE_SPREAD = 1.25  # a calibration's slope needs traced bytes this far apart (see fit)
TRACE_TIMEOUT_S = 300.0  # a trace takes seconds (fake tensors)
PROBE_TIMEOUT_S = 1800.0  # a few optimizer steps; generous for a slow CPU at a large batch
DEFAULT_STEPS = 5
DEFAULT_MARGIN = 0.10
DEFAULT_OUT = Path("results") / "max-batch.json"


class ProbeFailed(RuntimeError):
    """A probe ended neither by training nor by running out of memory (a crash, a timeout): no answer."""


def block_size_list(text: str) -> tuple[int, ...]:
    """A flag type for --block-size: '64,128,256' -> (64, 128, 256), sorted, distinct, positive."""
    try:
        values = {int(part) for part in text.split(",")}
    except ValueError:
        values = set()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 64,128,256, got {text!r}")
    return tuple(sorted(values))


def margin_flag(text: str) -> float:
    """A flag type for --margin: a share of the limit in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to below 1 (0.1 = 10 %), got {text!r}")
    return value


@dataclass(frozen=True)
class MaxBatchSettings:
    """What to search: the model and training (as resolved from preset, config and flags), where, under what."""

    model: dict[str, Any]  # ModelConfig fields, vocabulary filled in; block_size is each row's own
    train: dict[str, Any]  # TrainConfig fields; batch, budget and evaluation are each probe's own
    block_sizes: tuple[int, ...]
    data_dir: Path  # the prepared corpus: the probes' training batches
    env: dict[str, Any]  # the device probe's answer (tune.exec.worker.probe)
    limit: int  # bytes a probe may hold (the process's memory limit)
    margin: float = DEFAULT_MARGIN
    steps: int = DEFAULT_STEPS
    progress: bool = True

    @property
    def allowed(self) -> int:
        """The peak a reported batch may reach: the limit less the margin."""
        return int(self.limit * (1 - self.margin))


@dataclass
class Probe:
    """One real probe: a batch trained for --steps steps under the limit, or not."""

    batch: int
    status: Status  # ok or oom (anything else raises ProbeFailed)
    traced_bytes: int | None
    baseline_bytes: int
    predicted_bytes: int | None  # before it ran, by the calibration of the probes before it
    measured_bytes: int | None  # tune.exec.record.measured_peak: what the limit counts
    seconds: float
    message: str | None = None

    def fits(self, allowed: int) -> bool:
        """Trained, and peaked within the limit less the margin."""
        return self.status == Status.OK and self.measured_bytes is not None and self.measured_bytes <= allowed


@dataclass
class Row:
    """The answer for one block size."""

    block_size: int
    max_batch: int | None  # the largest batch that fitted with the margin (None: not even batch 1)
    fits_batch: int | None  # the largest batch seen to train at all, margin or not
    confirmed: bool  # the next batch up was probed and did not fit
    predicted_bytes: int | None  # of max_batch, predicted before its probe ran
    measured_bytes: int | None  # of max_batch
    limit_bytes: int
    allowed_bytes: int
    probes: int  # real probes (trace-only probes not counted)
    trace_probes: int
    seconds: float
    calibration: dict[str, Any] = field(default_factory=dict)
    tries: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class Prober:
    """Runs trace-only and real probes for one model, each in its own process, and keeps what they said."""

    def __init__(self, settings: MaxBatchSettings, runner: TrialRunner, logs: Path, keep_logs: Path,
                 say: Callable[[str], None]) -> None:
        self.s = settings
        self.runner = runner
        self.logs = logs  # a temporary folder: a probe's log is kept (in keep_logs) only when it failed
        self.keep_logs = keep_logs
        self.say = say
        # Before any probe: what the device probe saw (on the CPU the data segment before training; CUDA 0).
        self.baseline = settings.env.get("vm_data_bytes", 0) if settings.env["device_type"] != "cuda" else 0
        self.estimated: set[tuple[int, int]] = set()  # (block size, batch) whose trace failed: analytic instead

    def configs(self, block_size: int, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model and train fields of a probe: --steps full steps, one evaluation window (never above the batch)."""
        model = {**self.s.model, "block_size": block_size}
        train = {**self.s.train, "batch_size": batch, "max_iters": self.s.steps, "max_seconds": None,
                 "eval_iters": 1, "eval_batch_size": batch, "eval_train_split": False,
                 "device": self.s.env["device"]}
        return model, train

    def job(self, block_size: int, batch: int) -> TrialJob:
        """What the probe process needs (no rungs, no checkpoint)."""
        model, train = self.configs(block_size, batch)
        return TrialJob(model=model, train=train, data=str(self.s.data_dir), device=self.s.env["device"],
                        memory_limit=self.s.limit, log=str(self.logs / f"block{block_size}-batch{batch}.log"),
                        cores=self.s.env.get("cores") or None)

    def analytic(self, block_size: int, batch: int) -> int:
        """gptcore.memory's estimate of the step's tensor bytes (no process)."""
        model, train = self.configs(block_size, batch)
        return estimate_step(ModelConfig(**model), TrainConfig(**train)).peak_bytes

    def trace(self, block_size: int, batch: int) -> int:
        """The traced tensor peak of the step (a trace-only probe); the analytic estimate if the trace fails."""
        seen: list[dict[str, Any] | None] = []

        def skip(memory: dict[str, Any] | None) -> bool:
            seen.append(memory)
            return True  # traced: do not train

        run = self.runner.run(self.job(block_size, batch), _never_stop, TRACE_TIMEOUT_S, on_predicted=skip)
        _check_interrupted(run.status)
        memory = seen[0] if seen else None
        if memory is None or memory.get("peak_bytes") is None:  # no fake kernel for an op, or the process died
            why = (memory or {}).get("error") or run.message or "no trace"
            self.estimated.add((block_size, batch))  # the estimate is the next best, but no lower bound
            self.say(f"block {block_size}: batch {batch} could not be traced ({why}); using the analytic estimate")
            return self.analytic(block_size, batch)
        self.baseline = int(memory.get("baseline_bytes", self.baseline))
        return int(memory["peak_bytes"])

    def train(self, block_size: int, batch: int, calibration: Calibration) -> Probe:
        """Train `batch` for --steps steps under the limit (tracing the step first, for the calibration)."""
        traced: list[dict[str, Any] | None] = []

        def run_it(memory: dict[str, Any] | None) -> bool:
            traced.append(memory)
            return False  # traced: now train

        job = self.job(block_size, batch)
        run = self.runner.run(job, _never_stop, PROBE_TIMEOUT_S, on_predicted=run_it)
        _check_interrupted(run.status)
        memory = traced[0] if traced else None
        if memory is not None:
            self.baseline = int(memory.get("baseline_bytes", self.baseline))
        if run.status not in (Status.OK, Status.OOM):
            raise ProbeFailed(f"block {block_size}, batch {batch}: probe {run.status}: {run.message}"
                              f"{self.keep_log(Path(job.log))}")
        traced_bytes = int(memory["peak_bytes"]) if memory and memory.get("peak_bytes") is not None else None
        predicted = calibration.predict(traced_bytes, self.baseline) if traced_bytes is not None else None
        measured = measured_peak(run.result["peak_memory"]) if run.result else None
        return Probe(batch, run.status, traced_bytes, self.baseline, predicted, measured, run.trial_seconds,
                     run.message)


    def keep_log(self, log: Path) -> str:
        """Copy a failed probe's log out of the temporary folder; ' (log: PATH)', or '' without a log."""
        if not log.exists():
            return ""
        kept = self.keep_logs / log.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, kept)
        return f" (log: {kept})"


def _never_stop(*_args: Any) -> bool:
    return False


def _check_interrupted(status: Status) -> None:
    if status == Status.INTERRUPTED:  # Ctrl-C reached the probe: stop the whole search the usual way (exit 130)
        raise KeyboardInterrupt


def traced_at(traces: dict[int, int], batch: int) -> float:
    """Traced bytes at `batch`: linear between the traced batches around it, extrapolated past the ends."""
    xs = sorted(traces)
    if batch in traces or len(xs) == 1:
        return float(traces.get(batch, traces[xs[0]]))
    # The peak is nearly affine in the batch, not exactly (the step's peak moves between phases): the two
    # nearest traced batches around it make the best line.
    right = next((i for i, x in enumerate(xs) if x > batch), len(xs) - 1)
    i = min(max(right, 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = traces[x0], traces[x1]
    return y0 + (y1 - y0) * (batch - x0) / (x1 - x0)


def predicted_max(traces: dict[int, int], calibration: Calibration, baseline: int, allowed: int) -> int:
    """The largest batch (0 to MAX_BATCH) whose predicted peak is within `allowed`."""

    def ok(batch: int) -> bool:
        return calibration.predict(int(traced_at(traces, batch)), baseline) <= allowed

    lo, hi = 0, MAX_BATCH + 1  # ok(lo) taken as true, ok(hi) as false: predictions grow with the batch
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def analytic_bracket(prober: Prober, block_size: int) -> int:
    """The largest batch whose analytic estimate plus the baseline is within the allowed peak (0: none)."""
    allowed = prober.s.allowed

    def ok(batch: int) -> bool:
        return prober.baseline + prober.analytic(block_size, batch) <= allowed

    lo, hi = 0, 1
    while hi <= MAX_BATCH and ok(hi):  # double up to the first miss, then bisect
        lo, hi = hi, 2 * hi
    hi = min(hi, MAX_BATCH + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def has_slope(points: list[tuple[int, int]]) -> bool:
    """Whether the points' traced bytes spread far enough to fit a slope (see fit)."""
    traced = [t for t, _ in points]
    return len(traced) >= 2 and max(traced) >= SLOPE_SPREAD * min(traced)


def fit(points: list[tuple[int, int]]) -> Calibration:
    """Calibration from (traced, measured beyond the baseline) of probes that trained.

    A slope only from points whose traced bytes spread by SLOPE_SPREAD at least: the CPU's measure moves by tens
    of MiB from run to run of the same batch, so neighbouring batches say nothing about it. Two such points make
    a line (Calibration.fit keeps ratio 1 below three: the tuner's caution against a false skip; a search wants
    the best guess), more are Calibration.fit's least squares. Closer points: ratio 1 and their median overhead.
    """
    if has_slope(points):
        if len(points) == 2:
            (t0, m0), (t1, m1) = sorted(points)
            ratio = (m1 - m0) / (t1 - t0)
            if ratio >= 1.0:
                return Calibration(ratio, m0 - ratio * t0, 2)
        return Calibration.fit(points)
    if not points:
        return Calibration()
    return Calibration(1.0, statistics.median(m - t for t, m in points), len(points))


def calibration_points(probes: list[Probe]) -> list[tuple[int, int]]:
    """(traced, measured beyond the baseline) of the probes that trained."""
    return [(p.traced_bytes, p.measured_bytes - p.baseline_bytes) for p in probes
            if p.status == Status.OK and p.traced_bytes and p.measured_bytes]


def choose(lo: int, hi: int | None, guess: int, sloped: bool, anchor: int, edge_steps: int) -> int:
    """The next batch to probe, strictly between the largest that fitted (lo) and the smallest that did not (hi).

    Without a fitted slope the guess errs away from `anchor` (the last measured probe; lo before any): tensors
    alone under-predict, and ratio 1 through a measured point under-predicts past it and over-predicts before it.
    So the answer lies between the two: bisect there. With a slope, probe the guess, unless it keeps missing.
    """
    top = MAX_BATCH if hi is None else hi - 1
    if not sloped:
        target = (anchor + guess + 1) // 2
    elif edge_steps >= EDGE_STEPS:
        target = (lo + top + 1) // 2 if hi is not None else 2 * lo
    else:
        target = guess
    return min(max(target, lo + 1), top)


def search(prober: Prober, block_size: int, trace_one: int, shared: list[tuple[int, int]]) -> Row:
    """Find the largest batch that fits at `block_size` (see the module docstring); `shared` gains its points."""
    t0 = time.perf_counter()
    s = prober.s
    traces = {1: trace_one}
    # The analytic bracket is a batch near the frontier; its trace and batch 1's make the first line to predict on.
    second = min(max(analytic_bracket(prober, block_size), 2), MAX_BATCH)
    traces[second] = prober.trace(block_size, second)
    lo, hi, edge = 0, None, 0
    probes: list[Probe] = []
    while len(probes) < MAX_PROBES and (hi is None or hi - lo > 1) and lo < MAX_BATCH:
        # Every block size's probes calibrate: the allocator is the same, and their spread gives the slope.
        points = shared + calibration_points(probes)
        calibration = fit(points)
        guess = predicted_max(traces, calibration, prober.baseline, s.allowed)
        measured = [p.batch for p in probes if p.measured_bytes]
        batch = choose(lo, hi, guess, has_slope(points), measured[-1] if measured else lo, edge)
        probe = prober.train(block_size, batch, calibration)
        probes.append(probe)
        if probe.traced_bytes:
            traces[batch] = probe.traced_bytes
        at_edge = batch == lo + 1 or (hi is not None and batch == hi - 1)
        if probe.fits(s.allowed):
            lo = batch
        else:
            hi = batch
        edge = edge + 1 if at_edge else 0
        prober.say(describe(block_size, probe, s.allowed))
    shared.extend(calibration_points(probes))
    best = next((p for p in probes if p.batch == lo), None)
    trained = [p.batch for p in probes if p.status == Status.OK]
    return Row(block_size=block_size, max_batch=lo or None, fits_batch=max(trained, default=None),
               confirmed=hi == lo + 1, predicted_bytes=best.predicted_bytes if best else None,
               measured_bytes=best.measured_bytes if best else None, limit_bytes=s.limit, allowed_bytes=s.allowed,
               probes=len(probes), trace_probes=2, seconds=time.perf_counter() - t0,  # batch 1 and the bracket
               calibration=fit(shared).to_dict(), tries=probes)


def describe(block_size: int, probe: Probe, allowed: int) -> str:
    """One progress line per real probe."""
    verdict = "fits" if probe.fits(allowed) else ("over the margin" if probe.status == Status.OK else probe.status)
    measured = f"{probe.measured_bytes / MiB:,.0f} MiB" if probe.measured_bytes else "-"
    predicted = f"{probe.predicted_bytes / MiB:,.0f}" if probe.predicted_bytes else "-"
    return (f"block {block_size}: batch {probe.batch} {verdict}: {measured} (predicted {predicted}, allowed "
            f"{allowed / MiB:,.0f}) in {probe.seconds:.1f} s")


def check_fits_at_one(traces: dict[int, int], baseline: int, settings: MaxBatchSettings,
                      estimated: set[tuple[int, int]] = frozenset()) -> None:
    """Refuse a block size whose step, traced at batch 1, cannot fit: the tensors alone are a lower bound (an
    analytic estimate is none: under autocast it errs high, so it refuses nothing)."""
    for block_size, traced in traces.items():
        if (block_size, 1) in estimated:
            continue
        predicted = Calibration().predict(traced, baseline)
        if predicted > settings.allowed:
            raise UserError(f"--block-size {block_size}: the model does not fit even at batch 1: predicted peak "
                            f"{predicted / MiB:,.0f} MiB at batch 1, over the {settings.allowed / MiB:,.0f} MiB "
                            f"allowed (--memory-limit {settings.limit / MiB:,.0f} MiB less the "
                            f"{settings.margin:.0%} --margin)")


def settings_from_args(args: argparse.Namespace, runner: TrialRunner) -> MaxBatchSettings:
    """Check everything asked for, before any probe trains: corpus, configs, block sizes, --out, device, limit."""
    from gptcore.__main__ import resolve_configs
    from gptcore.prepare import ensure_prepared, read_meta
    from tune.memory.judge import check_memory_limit, limit_for

    data_dir = ensure_prepared(args.data, progress=not args.no_progress)
    meta = read_meta(data_dir)
    model_cfg, train_cfg = resolve_configs(args, meta["vocab_size"])  # preset < --config < flags
    block_sizes = args.block_sizes or (model_cfg.block_size,)
    shortest = min(meta["train_tokens"], meta["val_tokens"])
    if max(block_sizes) + 2 > shortest:
        raise UserError(f"--block-size {max(block_sizes)}: needs more than the corpus's {shortest} tokens in its "
                        f"smaller split ({args.data})")
    check_out(args.out)
    env = runner.probe(train_cfg.device)
    limit = limit_for(args.memory_limit, env)
    if limit is None:  # a CPU has no memory size of its own; the machine's RAM would swap or wake the OOM killer
        raise UserError(f"--memory-limit is required on {env['device_type']} (e.g. --memory-limit 2GiB): the "
                        f"device has no memory size of its own to fit")
    check_memory_limit(limit, env)
    if train_cfg.dtype == "float16" and env["device_type"] != "cuda":
        raise UserError(f"--dtype float16 needs a GPU; on {env['device_type']} use bfloat16 or float32")
    if train_cfg.dtype == "bfloat16" and not env.get("bf16_supported", True):
        raise UserError("--dtype bfloat16: this GPU does not support bfloat16; use float16")
    return MaxBatchSettings(model=asdict(model_cfg), train=asdict(train_cfg), block_sizes=block_sizes,
                            data_dir=data_dir, env=env, limit=limit, margin=args.margin, steps=args.steps,
                            progress=not args.no_progress)


def check_out(out: Path) -> None:
    """--out must be a file that can be written (replaced), before any work; nothing is created."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a .json file path")
    try:
        check_output_dir(out.parent if str(out.parent) else Path("."), "max-batch table")
    except UserError as exc:
        raise UserError(f"--out {out}: {exc}") from None


def run_max_batch(settings: MaxBatchSettings, runner: TrialRunner, out: Path,
                  say: Callable[[str], None] | None = None) -> list[Row]:
    """Check that batch 1 fits at every block size, then search each; the rows."""
    say = say or ((lambda line: print(line, file=sys.stderr, flush=True)) if settings.progress else _quiet)
    with tempfile.TemporaryDirectory(prefix="max-batch-logs-") as logs:
        prober = Prober(settings, runner, Path(logs), out.parent / f"{out.stem}-logs", say)
        # Every block size's batch 1 is checked before any training: a refusal costs seconds, not a search.
        ones = {t: prober.trace(t, 1) for t in settings.block_sizes}
        check_fits_at_one(ones, prober.baseline, settings, prober.estimated)
        shared: list[tuple[int, int]] = []
        return [search(prober, t, ones[t], shared) for t in settings.block_sizes]


def _quiet(_line: str) -> None:
    pass


def table(rows: list[Row]) -> str:
    """The readable table: block size -> max batch, predicted and measured peak, limit, probes."""
    head = ["block size", "max batch", "fits (no margin)", "predicted MiB", "measured MiB", "limit MiB",
            "probes", "seconds"]

    def mib(value: int | None) -> str:
        return f"{value / MiB:,.0f}" if value else "-"

    body = [[str(r.block_size), (str(r.max_batch) if r.max_batch else "none") + ("" if r.confirmed else " ?"),
             str(r.fits_batch or "-"), mib(r.predicted_bytes), mib(r.measured_bytes), mib(r.limit_bytes),
             f"{r.probes} (+{r.trace_probes} traced)", f"{r.seconds:.1f}"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(head)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    return "\n".join(lines)


def write_json(out: Path, settings: MaxBatchSettings, rows: list[Row], extra: dict[str, Any]) -> Path:
    """The settings, the machine (the device probe's environment) and the rows, written atomically."""
    doc = {"settings": {**extra, "model": settings.model, "train": settings.train,
                        "block_sizes": list(settings.block_sizes), "memory_limit_bytes": settings.limit,
                        "allowed_bytes": settings.allowed, "margin": settings.margin, "steps": settings.steps,
                        "data": str(settings.data_dir)},
           "machine": settings.env, "rows": [r.to_dict() for r in rows]}
    return atomic_write_text(out, json.dumps(doc, indent=2, default=str) + "\n")
