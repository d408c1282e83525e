"""The trial process: set limits, train, stream evaluations to the parent, report how it ended.

Runs in a child forked from a forkserver that has torch preloaded (cheap to start), so an OOM, a crash, a
leak or a hang stays inside one trial. The parent owns the Optuna storage; this side only talks through the pipe,
in the messages of tune.exec.protocol (the conversation: docs/signals.md). The end it reports carries `measure`, how
much of the machine the trial got (tune.exec.health), so the parent can flag a contended trial.

Optional job fields: `cores` (pin to these cores, one torch thread per core), `gpu` (train on that GPU alone,
through CUDA_VISIBLE_DEVICES), `tuner_pid` and `deadline_s` (end with the tuner, and at the latest `deadline_s`
seconds after starting, even if the tuner is frozen: see guard()).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import itertools
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from tune.core.outcomes import classify, first_line
from tune.exec import protocol
from tune.exec.protocol import TrialJob

DEADLINE_EXIT = 124  # the exit code of a trial process that ended itself at its deadline (as timeout(1) does)


def apply_memory_limit(device_type: str, limit: int | None, device_index: int | None = None) -> None:
    """Emulate a smaller device: CUDA via the allocator's per-process fraction, CPU via RLIMIT_DATA."""
    if limit is None:
        return
    if device_type == "cuda":
        import torch

        index = torch.cuda.current_device() if device_index is None else device_index
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), index)
    else:
        # Allocations past this fail with "DefaultCPUAllocator: can't allocate memory": a real OOM.
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Line by line: a trial killed by its tuner (a timeout, Ctrl-C) keeps every line it printed.
    sys.stdout.reconfigure(line_buffering=True)
    faulthandler.enable()  # a segfault in a kernel leaves a Python stack in the log


def pin_cores(cores: list[int] | None) -> list[int] | None:
    """Pin this process to `cores` and use one torch thread per core; the cores it now runs on (None: unpinned).

    Call it before any other thread starts: on Linux the mask is per thread, and new threads (torch's intra-op
    pool, the watchdog) inherit the mask of the thread that creates them.
    """
    if not cores:
        return None
    os.sched_setaffinity(0, cores)
    import torch

    torch.set_num_threads(len(cores))
    # Inter-op threads only run independent ops side by side (TorchScript, fork/join); in eager training they
    # would just be more threads competing for the same owned cores. The forkserver may already have fixed it.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return sorted(os.sched_getaffinity(0))


def select_gpu(gpu: int | None) -> str | None:
    """Make GPU `gpu` (numbered as the tuner sees them) this process's only CUDA device; its device name.

    CUDA reads CUDA_VISIBLE_DEVICES once, when it initialises, so this must run before anything touches CUDA.
    The forkserver only imports torch (which initialises nothing, and caches no device count before CUDA is
    initialised: torch.cuda.device_count), so it is still in time here; the check below says so if that changes.
    """
    if gpu is None:
        return None
    from gptcore.errors import UserError

    inherited = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the tuner's own selection: `gpu` indexes it, as torch numbers them
        if not 0 <= gpu < len(inherited):
            raise UserError(f"GPU {gpu}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} shows "
                            f"{len(inherited)} GPU(s)")
        os.environ["CUDA_VISIBLE_DEVICES"] = inherited[gpu]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before the trial chose its GPU (in the forkserver?): "
                           "CUDA_VISIBLE_DEVICES cannot take effect")
    return "cuda:0"


def _close_forkserver_pipe() -> None:
    """Drop this process's copy of the forkserver's "alive" pipe (every forkserver child inherits one).

    The forkserver exits when the last copy closes: with the tuner's the only one left, a dead tuner (kill -9
    included) ends the forkserver at once, and die_with_parent() then ends this process with it. The trial
    never starts processes of its own, so it does not need the pipe.
    """
    with contextlib.suppress(ImportError, AttributeError, OSError):
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None


def guard(tuner_pid: int | None, deadline_s: float | None) -> None:
    """No orphans: end this process when the tuner or the forkserver dies, or `deadline_s` seconds from now.

    The kernel kills it when its parent (the forkserver) dies; the watchdog also polls the tuner itself, the
    parent pid (a dead parent before prctl took effect) and the deadline (a frozen tuner cannot kill it).
    """
    from gptcore.files import pid_alive
    from gptcore.procs import die_with_parent, watchdog

    parent = os.getppid()
    die_with_parent()
    _close_forkserver_pipe()
    deadline = None if deadline_s is None else time.monotonic() + deadline_s

    def check() -> tuple[int, str | None] | None:
        if tuner_pid is not None and not pid_alive(tuner_pid):
            return 1, f"trial process: the tuner (pid {tuner_pid}) is gone; ending"
        if os.getppid() != parent:
            return 1, f"trial process: its parent (pid {parent}) is gone; ending"
        if deadline is not None and time.monotonic() > deadline:
            return DEADLINE_EXIT, f"trial process: past its deadline ({deadline_s:.0f} s); ending"
        return None

    watchdog(check)


def _load_target(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _gpu_uuid(device) -> str | None:
    """NVML's name for a CUDA device ("GPU-<uuid>"), which CUDA_VISIBLE_DEVICES renumbering cannot change."""
    if device.type != "cuda":
        return None
    import torch

    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def _keep_model(job: TrialJob, result: Any, model_cfg: Any, train_cfg: Any, data: Any) -> str | None:
    """Save the model of a trial that trained to the full target (the study offers the best one); else None."""
    path = job.checkpoint
    if not path or result.stopped_by not in ("max_seconds", "max_iters"):
        return None
    from gptcore.checkpoint import save_checkpoint

    try:
        save_checkpoint(path, result.model, model_cfg, train_cfg, data.tokenizer, optimizer=result.optimizer,
                        step=result.steps, extra={"tuner": {"val_loss": result.val_loss, "log": job.log}})
    except Exception:  # a full disk, say: the trial's figures still count; the log has the reason
        traceback.print_exc()
        return None
    return path


@dataclass
class _Setup:
    """What the trial trains with, once set up: configs, device, data, the train function, and where it runs."""

    model_cfg: Any  # gptcore.config.ModelConfig
    train_cfg: Any  # gptcore.config.TrainConfig
    device: Any  # torch.device
    data: Any  # gptcore.data.TokenData
    train: Callable[..., Any]  # gptcore.train.train, or a test's stand-in
    gpu: Any  # tune.exec.health.GpuWatch on the trial's GPU
    placement: dict[str, Any]  # gpu_index and gpu_uuid, for the record


def run_trial(conn: Connection, job: TrialJob) -> None:
    """Child entry point: train one configuration and report through `conn` (tune.exec.protocol)."""
    # Ctrl-C reaches the whole process group; the parent decides, and stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a group SIGTERM (systemd, Slurm) too: the tuner records first
    _redirect_output(job.log)
    try:
        _train_and_report(conn, job)
    except Exception as exc:  # set-up or reporting failed: an outcome (an OOM is still an OOM), not a crash
        _report_failure(conn, exc, {}, default_phase="setup")
    finally:
        conn.close()


def _train_and_report(conn: Connection, job: TrialJob) -> None:
    """Set up, say Ready, ask whether to run (when predicting), train, and send how it ended."""
    cores = pin_cores(job.cores)  # first: the threads started below inherit the mask
    guard(job.tuner_pid, job.deadline_s)
    setup = _set_up(job)
    conn.send(protocol.Ready())
    if job.predict and _predict_and_ask(conn, setup) == protocol.SKIP:
        return
    usage = _Usage(setup, cores)
    print(f"model {json.dumps(job.model)}\ntrain {json.dumps(job.train)}")  # the log says what ran
    from gptcore.curve import CurveWriter, curve_path

    # The curve beside the log, line by line: a trial killed or failed keeps the points it reached.
    with CurveWriter(curve_path(job.log)) as curve:
        try:
            result = setup.train(setup.model_cfg, setup.train_cfg, setup.data, on_eval=_evaluator(conn),
                                 progress=False, eval_at=job.eval_at, on_log=curve.add)
        except Exception as exc:
            _report_failure(conn, exc, usage.measure())
            return
    figures = result.to_dict()
    print("done: " + ", ".join(f"{k} {figures[k]}" for k in ("stopped_by", "steps", "val_loss", "tokens_per_s",
                                                              "compile") if k in figures))
    figures["checkpoint"] = _keep_model(job, result, setup.model_cfg, setup.train_cfg, setup.data)
    conn.send(protocol.Finished(figures, usage.measure()))


def _set_up(job: TrialJob) -> _Setup:
    """Choose the GPU, build the configs, apply the memory limit, load the data and the train function."""
    device_name = select_gpu(job.gpu) or job.device
    if job.compile_cache:  # read by torch when it first compiles: before the first step
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = job.compile_cache
        os.environ["TRITON_CACHE_DIR"] = os.path.join(job.compile_cache, "triton")
    _tqdm_thread_lock()
    import torch

    from gptcore.config import ModelConfig, TrainConfig
    from gptcore.data import TokenData
    from tune.exec.health import GpuWatch

    model_cfg = ModelConfig(**job.model)
    # With its own GPU, the one device this process sees is cuda:0, whatever the tuner's --device said.
    train_cfg = TrainConfig(**{**job.train, "device": device_name} if job.gpu is not None
                            else job.train)
    device = torch.device(device_name)
    apply_memory_limit(device.type, job.memory_limit, device.index)
    data = TokenData(job.data)
    train = _load_target(job.target)
    uuid = _gpu_uuid(device)
    index = job.gpu if job.gpu is not None else device.index if device.type == "cuda" else None
    placement = {"gpu_index": index, "gpu_uuid": uuid}
    return _Setup(model_cfg, train_cfg, device, data, train, GpuWatch(uuid).open(), placement)


def _tqdm_thread_lock() -> None:
    """tqdm's default lock is a multiprocessing semaphore, registered with the resource tracker; a trial killed
    by its tuner (Ctrl-C, timeout) never unregisters it, and the tracker then warns on the tuner's console.
    A trial draws no bars: a thread lock does."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _predict_and_ask(conn: Connection, setup: _Setup) -> str:
    """Trace the step's peak memory, tell the parent, and return its answer: RUN or SKIP.

    The baseline is what this process holds before training: on the CPU the data segment the memory limit counts
    (measured here, after torch and the limit, before the data and the model), on CUDA nothing (the allocator's
    reserved bytes start at zero). A trace that fails (an op with no fake kernel) is said in the log and the
    trial runs unpredicted: the prediction is an aid, never a reason not to train.
    """
    from gptcore.hardware import vm_status

    baseline = vm_status().get("VmData", 0) if setup.device.type == "cpu" else 0
    try:
        from gptcore.memtrace import trace_step

        memory = trace_step(setup.model_cfg, setup.train_cfg, setup.device).to_dict()
    except Exception as exc:
        traceback.print_exc()
        memory = {"error": first_line(exc)}  # recorded (mem_trace_error): a study whose traces all fail says so
    conn.send(protocol.Predicted({**memory, "baseline_bytes": baseline}))
    return conn.recv()


def _evaluator(conn: Connection) -> Callable[[int, float, float], str]:
    """train()'s on_eval: each evaluation to the parent, numbered from 1; the parent's answer (CONTINUE or STOP)."""
    count = itertools.count(1)

    def on_eval(step: int, train_loss: float, val_loss: float) -> str:
        k = next(count)
        conn.send(protocol.Evaluated(k, step, train_loss, val_loss))
        answer = conn.recv()
        print(f"evaluation {k} at step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f} -> {answer}")
        return answer

    return on_eval


class _Usage:
    """How much of the machine the trial got while it trained: its CPU share (tune.exec.health.CpuMeter), the
    other processes on its GPU (the more of the two samples: at the start and at the end) and the GPU's use."""

    def __init__(self, setup: _Setup, cores: list[int] | None) -> None:
        import torch

        from tune.exec.health import CpuMeter

        self.gpu, self.placement = setup.gpu, setup.placement
        self.meter = CpuMeter(torch.get_num_threads(), cores).start()
        self.before = self.gpu.sample()

    def measure(self) -> dict[str, Any]:
        """The figures from the start until now (call it once, at the trial's end)."""
        after = self.gpu.sample()
        others = [v for v in (self.before["gpu_other_processes"], after["gpu_other_processes"]) if v is not None]
        return {**self.meter.stop(), **self.placement, "gpu_other_processes": max(others) if others else None,
                "gpu_util_percent": after["gpu_util_percent"]}


def _report_failure(conn: Connection, exc: Exception, measure: dict[str, Any],
                    default_phase: str | None = None) -> None:
    """The traceback to the log, the classified outcome to the parent (default_phase: where, if it does not say)."""
    traceback.print_exc()
    sys.stderr.flush()
    outcome = classify(exc)
    if default_phase is not None:
        outcome = replace(outcome, phase=outcome.phase or default_phase)
    conn.send(protocol.Failed(outcome, measure))


def gpus() -> list[dict[str, Any]]:
    """The CUDA devices this process sees: index, name, uuid, memory_bytes ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append({"index": index, "name": props.name, "uuid": _gpu_uuid(torch.device("cuda", index)),
                    "memory_bytes": props.total_memory})
    return out


def probe(conn: Connection, device_name: str, tuner_pid: int | None = None, deadline_s: float | None = None) -> None:
    """Child entry point: describe the device and this process's baseline, without training."""
    try:
        guard(tuner_pid, deadline_s)
        import torch

        from gptcore import hardware as hw
        from tune.exec.health import affinity

        device = hw.resolve_device(device_name)
        env = hw.environment(device)
        env["device_type"] = device.type
        env["vm_data_bytes"] = hw.vm_status().get("VmData", 0)
        env["bf16_supported"] = device.type != "cuda" or torch.cuda.is_bf16_supported()
        # The GPUs only when the tuner will use CUDA: listing them initialises CUDA, which a CPU study skips.
        env["gpus"] = gpus() if device.type == "cuda" else []
        env["gpu_count"] = len(env["gpus"])
        env["cores"] = affinity()
        conn.send(protocol.Probed(env))
    except Exception as exc:
        from gptcore.errors import UserError

        conn.send(protocol.ProbeFailed(str(exc), user_error=isinstance(exc, UserError)))
    finally:
        conn.close()
