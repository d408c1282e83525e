"""The peak tensor memory of one training step, traced without allocating anything.

The real step (gptcore.train.train_step: forward, loss, backward, clip, AdamW, zero_grad) runs twice on fake
tensors (FakeTensorMode: shapes, dtypes and devices, no storage) under PyTorch's memory tracker (MemTracker),
which follows every storage as ops create and free it. Two steps, because AdamW creates its state in the first:
only the second holds everything a long run holds. Fake CUDA tensors need a CUDA build of torch; on a CPU-only
build trace the CPU step.

torch.compile'd steps are traced eagerly (the compiled step usually needs less).
"""

from __future__ import annotations

import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _UpdateType

from gptcore.config import ModelConfig, TrainConfig
from gptcore.memory import StepMemory
from gptcore.train import StepParts, configure_optimizer, train_step
from gptcore.usermodel import build_model, load_class

TRACED_STEPS = 2
# Allocations this large are mmapped by glibc (its largest dynamic mmap threshold, DEFAULT_MMAP_THRESHOLD_MAX on
# 64-bit) and returned when freed. CUDA's caching allocator has no such split: None.
LARGE_FROM = {"cpu": 32 * 2**20}
PARTS = {"Parameter": "parameters", "Gradient": "gradients", "Optstate": "optimizer", "Activation": "activations",
         "Temp": "temporary", "Buffer": "buffers", "Other": "inputs"}


class _PeakTracker(MemTracker):
    """MemTracker keeping only the global peak, and how much of it sits in large allocations.

    MemTracker also updates every module's own peak after every op, which costs O(ops x modules): 4 s to trace
    an 8-layer step instead of 1.3 s (measured). The global figures are the same (tests/test_memory.py checks
    it against MemTracker itself). Allocations of at least `large_from` bytes are counted apart: on the CPU glibc
    serves them with mmap and unmaps them when freed, so they cost what they hold, where smaller ones come from a
    heap that fragments (see gptcore.memory.Calibration).
    """

    def __init__(self, large_from: int | None = None) -> None:
        super().__init__()
        self.large_from = large_from
        self.large = 0  # bytes in storages of at least large_from, now
        self.large_at_peak = 0

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
        if self.large_from is None:
            return
        def big(n: int | None) -> int:
            return n if n is not None and n >= self.large_from else 0

        if u_type == _UpdateType.ADD:
            self.large += big(winfo.mem_consumed)
        elif u_type == _UpdateType.DEL:
            self.large -= big(winfo.mem_consumed)
        elif u_type == _UpdateType.SIZE:
            self.large += big(winfo.mem_consumed) - big(old_mem_consumed)

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)
                self.large_at_peak = self.large


def trace_step(model_cfg: ModelConfig, train_cfg: TrainConfig, device: str | torch.device = "cpu",
               tracker: type[MemTracker] | None = None) -> StepMemory:
    """Peak tensor bytes of a training step of this model and batch on `device`, and what holds them."""
    t0 = time.perf_counter()
    device = torch.device(device)
    B, T, V = train_cfg.batch_size, model_cfg.block_size, model_cfg.vocab_size
    if model_cfg.model:  # imported for real first: tensors its module makes at import must not be fake ones
        load_class(model_cfg.model)
    with FakeTensorMode(), device:  # built on the device, as fake tensors: no .to() (it cannot swap fakes)
        model = build_model(model_cfg)
        model.train()
        optimizer = configure_optimizer(model, train_cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.dtype == "float16")
        mt = tracker() if tracker is not None else _PeakTracker(LARGE_FROM.get(device.type))
        mt.track_external(model, optimizer)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            # MemTracker refuses a second forward of the root module unless its module stats are reset: every
            # forward (steps, accumulation) starts here.
            mt.reset_mod_stats()
            window = torch.randint(0, V, (B, T + 1), device=device)  # as TokenData.get_batch: one (B, T+1) window
            return window[:, :-1], window[:, 1:]

        parts = StepParts(model, optimizer, scaler, train_cfg, device)
        with mt:
            for _ in range(TRACED_STEPS):
                train_step(parts, next_batch)
        dev = max(mt._peak_mem, key=mt._peak_mem.get)  # the device the step runs on
        snap = mt.get_tracker_snapshot("peak")[dev]
        # Between steps only what lives the whole run is left: weights, buffers, AdamW's state (not its scratch).
        resident = mt.get_tracker_snapshot("current")[dev]["Total"]
        # Large transient bytes at the peak: the large ones then, less the large ones that stay (a huge embedding).
        large = getattr(mt, "large_at_peak", 0) - getattr(mt, "large", 0)
    by_part = {PARTS.get(getattr(k, "value", str(k)), str(k)): int(v) for k, v in snap.items() if k != "Total"}
    return StepMemory(peak_bytes=int(mt._peak_mem[dev]), parts=by_part, resident_bytes=int(resident),
                      large_bytes=int(large), method="traced", seconds=time.perf_counter() - t0)

