"""The training loop: a plain function the CLI calls once and the tuner calls many times."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from tqdm import tqdm

from gptcore import hardware as hw
from gptcore.config import ModelConfig, TrainConfig
from gptcore.data import TokenData
from gptcore.errors import Diverged, UserError
from gptcore.model import LanguageModel, build_model

# on_eval(step, train_loss, val_loss) -> "stop" to end training early (the tuner prunes through it).
EvalCallback = Callable[[int, float, float], Any]
CHECK_EVERY = 10  # steps between reading losses back from the device (each read is a GPU sync)
# The first steps of a process pay one-time costs (allocator growth, kernel selection, AdamW state, lazy imports).
# They train like any other step but run before the clock starts: outside the time budget and outside tokens/s,
# reported separately as warmup_steps / warmup_seconds.
WARMUP_STEPS = 2
WSD_DECAY_START = 0.8  # warm-up-stable-decay: the learning rate decays over the last 20 % of the budget


@dataclass
class EvalPoint:
    """One evaluation: step, mean losses over eval_iters batches, training seconds so far."""

    step: int
    train_loss: float
    val_loss: float
    train_seconds: float


@dataclass
class TrainResult:
    """What a training run did and how fast; `model` and `optimizer` are for saving, not serialising."""

    history: list[EvalPoint]
    steps: int
    tokens: int
    train_seconds: float  # timed training only: warm-up steps and evaluation excluded
    eval_seconds: float
    tokens_per_s: float  # over the timed steps (all steps if the run never got past the warm-up)
    peak_memory: dict[str, int]
    n_params: int
    mfu: float | None
    device: str
    stopped_by: str  # "max_iters", "max_seconds", "callback" or "interrupted"
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    model: LanguageModel | None = field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def train_loss(self) -> float:
        """Train loss at the last evaluation."""
        return self.history[-1].train_loss if self.history else math.nan

    @property
    def val_loss(self) -> float:
        """Validation loss at the last evaluation."""
        return self.history[-1].val_loss if self.history else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no model, no optimizer)."""
        # Not dataclasses.asdict(self): it would deep-copy the model and the optimizer state first.
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "optimizer")}
        d.update(history=[asdict(p) for p in self.history], peak_memory=dict(self.peak_memory),
                 train_loss=self.train_loss, val_loss=self.val_loss)
        return d


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (not biases, LayerNorm gains or embeddings' rows...)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # Matrices (linear and embedding weights) decay; vectors (biases, LayerNorm) do not, as in nanoGPT.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in a few launches; it exists for CUDA tensors only.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, fused=device.type == "cuda")


@dataclass
class StepParts:
    """What one optimiser step works on: the model (compiled or not), its AdamW, the loss scaler, the config."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device


def train_step(parts: StepParts, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
               phase: list[str] | None = None) -> torch.Tensor:
    """One optimiser step: grad_accum_steps forward/backward passes, clip, AdamW, zero the grads; the last loss.

    The training loop and the memory tracer (gptcore.memtrace) both run this, so the step whose peak memory is
    predicted is the step that trains. `phase[0]` says where it is (an OOM is reported with its phase).
    """
    phase = phase if phase is not None else [""]
    cfg, accum = parts.cfg, parts.cfg.grad_accum_steps
    for _ in range(accum):
        x, y = next_batch()  # (B, T) each
        phase[0] = "forward"
        with hw.autocast(parts.device, cfg.dtype):
            _, loss = parts.model(x, y)
        phase[0] = "backward"
        parts.scaler.scale(loss / accum).backward()
    phase[0] = "optimizer"
    if cfg.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    return loss


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Learning rate: linear warm-up, then constant, cosine, or warm-up-stable-decay to lr/10 by the budget's end.

    `progress` is the share of the budget done (steps or timed seconds): the schedule is defined against the
    budget, so a run stopped early (a tuner's rung) has followed exactly the path of the full run so far.
    """
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    if cfg.lr_decay == "none":
        return cfg.learning_rate
    min_lr = cfg.learning_rate / 10
    p = min(progress, 1.0)
    if cfg.lr_decay == "wsd":  # stable until WSD_DECAY_START of the budget, then linear to min_lr
        if p <= WSD_DECAY_START:
            return cfg.learning_rate
        return cfg.learning_rate - (p - WSD_DECAY_START) / (1 - WSD_DECAY_START) * (cfg.learning_rate - min_lr)
    return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (cfg.learning_rate - min_lr)


@torch.no_grad()
def estimate_loss(
    model: LanguageModel, data: TokenData, cfg: TrainConfig, block_size: int, device: torch.device
) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split, always the same batches (fixed generator)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)  # same windows at every evaluation and every run
    out = {}
    for split in ("train", "val") if cfg.eval_train_split else ("val",):
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = data.get_batch(split, cfg.eval_batch_size or cfg.batch_size, block_size, gen, device)
            # Forward in chunks no larger than the training batch: a fixed evaluation set (the tuner's) must
            # never run out of memory where training itself fits. Same windows, same mean.
            total = 0.0
            for xs, ys in zip(x.split(cfg.batch_size), y.split(cfg.batch_size)):
                with hw.autocast(device, cfg.dtype):
                    _, loss = model(xs, ys)
                total += loss.float().item() * len(xs)
            losses[k] = total / len(x)
        out[split] = losses.mean().item()
    model.train()
    return out


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TokenData,
    *,
    on_eval: EvalCallback | None = None,
    model: LanguageModel | None = None,
    optimizer_state: dict[str, Any] | None = None,
    start_step: int = 0,
    progress: bool | None = None,
    eval_at: Sequence[float] | None = None,
    kind: str = "gpt",
    interrupt: threading.Event | None = None,
) -> TrainResult:
    """Train a model on `data` within the budget; returns losses, throughput, memory and the model.

    Resume by passing `model` (weights loaded), `optimizer_state` and `start_step`. With `eval_at` (ascending
    fractions of the budget, e.g. [1/27, 1/9, 1/3]), evaluate when training reaches each of them instead of every
    eval_interval steps: the tuner's rungs, the same points of the budget for trials of any speed.
    When `interrupt` is set (the CLI sets it on Ctrl-C) the loop stops at the next step boundary, with no final
    evaluation, so the model and optimizer are consistent and can be saved.
    `progress=False` shows no bar; otherwise a bar shows when stderr is a terminal.
    """
    phase = ["setup"]  # what the loop is doing; attached to any exception (the tuner reports where an OOM hit)
    try:
        return _train(model_cfg, train_cfg, data, on_eval, model, optimizer_state, start_step, progress,
                      eval_at, kind, phase, interrupt)
    except Exception as exc:
        exc.phase = phase[0]  # type: ignore[attr-defined]
        raise


def _train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TokenData, on_eval: EvalCallback | None,
           model: LanguageModel | None, optimizer_state: dict[str, Any] | None, start_step: int,
           progress: bool | None, eval_at: Sequence[float] | None, kind: str, phase: list[str],
           interrupt: threading.Event | None) -> TrainResult:
    device = hw.resolve_device(train_cfg.device)
    hw.check_dtype(device, train_cfg.dtype)
    if model_cfg.vocab_size != data.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} != corpus vocabulary {data.vocab_size}")
    data.check_block_size(model_cfg.block_size)
    torch.manual_seed(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)  # batch positions: reproducible per seed
    hw.reset_peak_memory(device)

    phase[0] = "model build"
    if model is None:
        model = build_model(model_cfg, kind)
    model = model.to(device)
    model.train()
    optimizer = configure_optimizer(model, train_cfg, device)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    step_model = torch.compile(model) if train_cfg.compile else model
    # GradScaler keeps small float16 gradients from underflowing; bf16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.dtype == "float16")
    parts = StepParts(step_model, optimizer, scaler, train_cfg, device)

    T, accum = model_cfg.block_size, train_cfg.grad_accum_steps
    tokens_per_step = train_cfg.batch_size * T * accum

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return data.get_batch("train", train_cfg.batch_size, T, gen, device)
    max_iters, max_seconds = train_cfg.max_iters, train_cfg.max_seconds
    history: list[EvalPoint] = []
    # Every interval of wall time goes to exactly one of these three by lap(): no second counting.
    train_s = eval_s = warmup_s = 0.0
    step = start_step
    eval_points = sorted(f for f in eval_at or () if 0 < f < 1)  # the end of the budget is always evaluated
    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet read back from the device
    recent: list[float] = []  # training losses since the last evaluation
    # A bar only on a terminal, even when asked for: redirected, its \r redraws would fill the log.
    show = progress is not False and sys.stderr.isatty()
    bar = tqdm(total=max_iters, initial=start_step, unit="step", disable=not show, leave=False,
               desc="train", dynamic_ncols=True)
    stopped_by = "max_iters"
    t_last = time.perf_counter()

    def lap(sync: bool) -> float:
        """Seconds since the previous lap (after waiting for queued GPU work when `sync`)."""
        nonlocal t_last
        if sync:
            hw.synchronize(device)
        now = time.perf_counter()
        elapsed, t_last = now - t_last, now
        return elapsed

    def progress() -> float:
        """Share of the budget done: steps or timed seconds, whichever is further along."""
        return max(step / max_iters if max_iters else 0.0, train_s / max_seconds if max_seconds else 0.0)

    def book(seconds: float) -> None:
        """Time of the first WARMUP_STEPS steps goes to warmup_s, every later interval to the budget."""
        nonlocal train_s, warmup_s
        if step - start_step <= WARMUP_STEPS:
            warmup_s += seconds
        else:
            train_s += seconds

    def check_pending() -> float:
        """Read back the buffered losses (one sync); raise Diverged at the first non-finite one."""
        if not pending:
            return math.nan
        values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
        for (s, _), v in zip(pending, values):
            if not math.isfinite(v):
                raise Diverged(s, v)
        pending.clear()
        recent.extend(values)
        return values[-1]

    def evaluate() -> bool:
        """Evaluate, record, call on_eval; True if the callback asked to stop."""
        nonlocal eval_s
        phase[0] = "eval"
        book(lap(sync=True))  # the GPU's queued steps belong to training time, not evaluation
        losses = estimate_loss(model, data, train_cfg, T, device)
        if not all(math.isfinite(v) for v in losses.values()):
            raise Diverged(step, losses["val"])
        train_loss = losses.get("train", sum(recent) / len(recent) if recent else math.nan)
        recent.clear()
        history.append(EvalPoint(step, train_loss, losses["val"], train_s))
        stop = on_eval is not None and on_eval(step, train_loss, losses["val"]) == "stop"
        eval_s += lap(sync=True)  # the callback (the tuner's report and prune decision) is evaluation overhead
        return stop

    try:
        while True:
            if max_iters is not None and step >= max_iters:
                stopped_by = "max_iters"
                break
            if max_seconds is not None and train_s >= max_seconds:
                stopped_by = "max_seconds"
                break
            if interrupt is not None and interrupt.is_set():
                stopped_by = "interrupted"
                break
            lr = lr_at(train_cfg, step, progress())
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(parts, next_batch, phase)
            step += 1
            pending.append((step, loss.detach()))
            if len(pending) >= CHECK_EVERY:
                last = check_pending()
                rate = tokens_per_step * (step - start_step) / max(train_s + warmup_s, 1e-9)
                bar.set_postfix(loss=f"{last:.3f}", tok_s=f"{rate:,.0f}")
            # The last warm-up step waits for the GPU, so none of its queued work leaks into the timed steps.
            book(lap(sync=step - start_step == WARMUP_STEPS))
            bar.update(1)

            done = progress()
            if eval_at is None:
                due = step % train_cfg.eval_interval == 0
            else:
                due = bool(eval_points) and done >= eval_points[0]
                while eval_points and done >= eval_points[0]:
                    eval_points.pop(0)  # points passed within one step are evaluated once
            if due and done < 1.0:
                check_pending()
                if evaluate():
                    stopped_by = "callback"
                    break
        check_pending()
        book(lap(sync=True))
        if stopped_by not in ("callback", "interrupted"):
            evaluate()  # the final figures are always measured at the end of the budget
    finally:
        bar.close()

    steps = step - start_step
    tokens = steps * tokens_per_step
    warmup_steps = min(steps, WARMUP_STEPS)
    timed_steps = steps - warmup_steps
    if timed_steps > 0 and train_s > 0:
        tokens_per_s = timed_steps * tokens_per_step / train_s
    else:  # the run ended inside its warm-up: the only rate there is includes the one-time costs
        seconds = train_s + warmup_s
        tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    peak = hw.peak_flops(device, train_cfg.dtype)
    flops = getattr(model, "flops_per_token", None)
    mfu = flops(T) * tokens_per_s / peak if (peak and flops) else None
    return TrainResult(
        history=history, steps=steps, tokens=tokens, train_seconds=train_s, eval_seconds=eval_s,
        tokens_per_s=tokens_per_s, peak_memory=hw.peak_memory(device), n_params=model.num_params(),
        mfu=mfu, device=str(device), stopped_by=stopped_by, warmup_steps=warmup_steps, warmup_seconds=warmup_s,
        model=model, optimizer=optimizer,
    )
