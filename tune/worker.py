"""The trial process: set limits, train, stream evaluations to the parent, report how it ended.

Runs in a child forked from a forkserver that has torch preloaded (cheap to start), so an OOM, a crash, a
leak or a hang stays inside one trial. The parent owns the Optuna storage; this side only talks through
the pipe: ("ready",), ("eval", k, step, train_loss, val_loss) -> "continue" | "stop", then ("done", result, measure)
or ("failed", status, message, phase, requested_bytes, measure); `measure` is how much of the machine the trial
got (tune.health), so the parent can flag a contended trial.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import re
import resource
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

TRAIN_TARGET = "gptcore.train:train"


def vm_data_bytes() -> int:
    """This process's data segment (VmData): what RLIMIT_DATA limits."""
    with open("/proc/self/status", encoding="ascii") as f:
        m = re.search(r"VmData:\s+(\d+) kB", f.read())
    return int(m.group(1)) * 1024 if m else 0


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
    faulthandler.enable()  # a segfault in a kernel leaves a Python stack in the log


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


def _keep_model(job: dict[str, Any], result: Any, model_cfg: Any, train_cfg: Any, data: Any) -> str | None:
    """Save the model of a trial that trained to the full target (the study offers the best one); else None."""
    path = job.get("checkpoint")
    if not path or result.stopped_by not in ("max_seconds", "max_iters"):
        return None
    from gptcore.checkpoint import save_checkpoint

    try:
        save_checkpoint(path, result.model, model_cfg, train_cfg, data.tokenizer, optimizer=result.optimizer,
                        step=result.steps, extra={"tuner": {"val_loss": result.val_loss, "log": job["log"]}})
    except Exception:  # a full disk, say: the trial's figures still count; the log has the reason
        traceback.print_exc()
        return None
    return path


def run_trial(conn: Connection, job: dict[str, Any]) -> None:
    """Child entry point: train one configuration and report through `conn`."""
    # Ctrl-C reaches the whole process group; the parent decides, and stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_output(job["log"])
    try:
        import torch

        from gptcore.config import ModelConfig, TrainConfig
        from gptcore.data import TokenData
        from tune.health import CpuMeter, GpuWatch
        from tune.outcomes import classify

        model_cfg = ModelConfig(**job["model"])
        train_cfg = TrainConfig(**job["train"])
        device = torch.device(job["device"])
        apply_memory_limit(device.type, job.get("memory_limit"), device.index)
        data = TokenData(job["data"])
        train = _load_target(job.get("target", TRAIN_TARGET))
        gpu = GpuWatch(_gpu_uuid(device)).open()
        conn.send(("ready",))
        evals = 0

        def on_eval(step: int, train_loss: float, val_loss: float) -> str:
            nonlocal evals
            evals += 1
            conn.send(("eval", evals, step, train_loss, val_loss))
            return conn.recv()

        meter = CpuMeter(torch.get_num_threads()).start()
        before = gpu.sample()

        def measure() -> dict[str, Any]:
            after = gpu.sample()
            others = [v for v in (before["gpu_other_processes"], after["gpu_other_processes"]) if v is not None]
            return {**meter.stop(), "gpu_other_processes": max(others) if others else None,
                    "gpu_util_percent": after["gpu_util_percent"]}

        try:
            result = train(model_cfg, train_cfg, data, on_eval=on_eval, progress=False,
                           eval_at=job.get("eval_at"))
        except Exception as exc:
            traceback.print_exc()
            sys.stderr.flush()
            outcome = classify(exc)
            conn.send(("failed", outcome.status, outcome.message, outcome.phase, outcome.requested_bytes, measure()))
            return
        figures = result.to_dict()
        figures["checkpoint"] = _keep_model(job, result, model_cfg, train_cfg, data)
        conn.send(("done", figures, measure()))
    except Exception as exc:  # set-up or reporting failed: an outcome (an OOM is still an OOM), not a crash
        traceback.print_exc()
        sys.stderr.flush()
        from tune.outcomes import classify

        outcome = classify(exc)
        conn.send(("failed", outcome.status, outcome.message, outcome.phase or "setup", outcome.requested_bytes, {}))
    finally:
        conn.close()


def probe(conn: Connection, device_name: str) -> None:
    """Child entry point: describe the device and this process's baseline, without training."""
    try:
        import torch

        from gptcore import hardware as hw

        device = hw.resolve_device(device_name)
        env = hw.environment(device)
        env["device_type"] = device.type
        env["vm_data_bytes"] = vm_data_bytes()
        env["bf16_supported"] = device.type != "cuda" or torch.cuda.is_bf16_supported()
        conn.send(("ok", env))
    except Exception as exc:
        from gptcore.errors import UserError

        conn.send(("user_error" if isinstance(exc, UserError) else "error", str(exc)))
    finally:
        conn.close()
