"""The training loop: a plain function the CLI calls once and the tuner calls many times."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from tqdm import tqdm

from gptcore import compiling
from gptcore import hardware as hw
from gptcore.config import ModelConfig, TrainConfig
from gptcore.curve import CurvePoint
from gptcore.data import TokenData
from gptcore.errors import Diverged, UserError
from gptcore.model import LanguageModel
from gptcore.usermodel import build_model  # gptcore's model, or the class --model names

# on_eval(step, train_loss, val_loss) -> "stop" to end training early (the tuner prunes through it).
EvalCallback = Callable[[int, float, float], Any]
# on_log(point): the training curve, a point each time the losses are read back and at each evaluation (gptcore.curve).
LogCallback = Callable[[CurvePoint], None]
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
    compile: str = "none"  # the mode the steps ran in: none, default or graphs (auto resolved)
    compile_reason: str = ""  # one line: why that mode
    compile_seconds: float = 0.0  # steps that compiled or captured: outside the budget and tokens/s, like warm-up
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
    graphs: bool = False  # the model runs as CUDA graphs: its outputs are overwritten by the next replay


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
        # A CUDA graph's output lives in memory its next replay reuses: keep a copy (one tiny kernel, no sync).
        out = loss.detach().clone() if parts.graphs else loss
        phase[0] = "backward"
        parts.scaler.scale(loss / accum).backward()
    phase[0] = "optimizer"
    if cfg.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    # Under CUDA graphs the grads stay allocated (see _compile): zeroed in place, never handed to the graph's pool.
    parts.optimizer.zero_grad(set_to_none=not parts.graphs)
    return out


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


@dataclass
class Resume:
    """Where a run starts: a model with its weights loaded (None: a fresh one), its AdamW state, the step reached."""

    model: LanguageModel | None = None
    optimizer_state: dict[str, Any] | None = None
    step: int = 0


class Clock:
    """Books every interval of wall time to exactly one account, so no second is counted twice or lost.

    Accounts: "train" (the budget and tokens/s), "warmup" (the first steps' one-time costs), "compile" (steps that
    compile or capture) and "eval". The clock starts when it is made.
    """

    ACCOUNTS = ("train", "warmup", "compile", "eval")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(self.ACCOUNTS, 0.0)
        self._last = time.perf_counter()

    def book(self, account: str, sync: bool = False) -> float:
        """Book the seconds since the last booking to `account` (after waiting for queued GPU work when `sync`)."""
        if sync:  # otherwise the GPU's queued work would be booked to whatever account comes next
            hw.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self.seconds[account] += elapsed
        return elapsed

    @property
    def spent_stepping(self) -> float:
        """Seconds of all steps, timed or not (everything but evaluation)."""
        return sum(self.seconds.values()) - self.seconds["eval"]

    @property
    def untimed(self) -> float:
        """Seconds of the steps outside the budget: warm-up and compilation."""
        return self.seconds["warmup"] + self.seconds["compile"]


class StepAccounts:
    """Which clock account each step's time goes to: queued untimed steps first (compile, warmup), then "train"."""

    def __init__(self, queue: Sequence[str]) -> None:
        self.queue = deque(queue)
        self.current = "warmup"  # time before the first step (none, in practice) counts as warm-up
        self.counts = dict.fromkeys(Clock.ACCOUNTS, 0)

    def next(self) -> str:
        """The account of the step about to run (and, from now, of time booked between steps)."""
        self.current = self.queue.popleft() if self.queue else "train"
        self.counts[self.current] += 1
        return self.current


class LossBuffer:
    """Training losses stay on the device and are read back every `every` steps: each read is a GPU sync."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet read back
        self.recent: list[float] = []  # read back since the last evaluation
        self.unlogged: list[float] = []  # read back since the curve's last point

    def add(self, step: int, loss: torch.Tensor) -> float | None:
        """Buffer one step's loss; read the buffer back when it is full (the last loss), else None."""
        self.pending.append((step, loss.detach()))
        return self.flush() if len(self.pending) >= self.every else None

    def flush(self) -> float:
        """Read back the buffered losses (one sync); raise Diverged at the first non-finite one."""
        if not self.pending:
            return math.nan
        values = torch.stack([loss for _, loss in self.pending]).float().cpu().tolist()
        for (step, _), value in zip(self.pending, values):
            if not math.isfinite(value):
                raise Diverged(step, value)
        self.pending.clear()
        self.recent.extend(values)
        self.unlogged.extend(values)
        return values[-1]

    def take_unlogged(self) -> float | None:
        """Mean training loss read back since the last call (None if none), then start over."""
        mean = sum(self.unlogged) / len(self.unlogged) if self.unlogged else None
        self.unlogged.clear()
        return mean

    def mean_since_eval(self) -> float:
        """Mean training loss since the last call (NaN if none), then start over."""
        mean = sum(self.recent) / len(self.recent) if self.recent else math.nan
        self.recent.clear()
        return mean


class EvalSchedule:
    """When to evaluate: every `interval` steps, or (with `fractions`) when training passes each share of the budget.

    The end of the budget is always evaluated, by the loop itself, so it is never due here.
    """

    def __init__(self, interval: int, fractions: Sequence[float] | None) -> None:
        self.interval = interval
        self.points = None if fractions is None else sorted(f for f in fractions if 0 < f < 1)

    def due(self, step: int, done: float) -> bool:
        """Whether to evaluate after `step`, with `done` of the budget used."""
        if self.points is None:
            due = step % self.interval == 0
        else:
            due = bool(self.points) and done >= self.points[0]
            while self.points and done >= self.points[0]:
                self.points.pop(0)  # points passed within one step are evaluated once
        return due and done < 1.0


@contextlib.contextmanager
def tagged(phase: list[str]) -> Iterator[list[str]]:
    """Attach what the run was doing (`phase[0]`) to any exception leaving it: the tuner reports where an OOM hit."""
    try:
        yield phase
    except Exception as exc:
        exc.phase = phase[0]  # type: ignore[attr-defined]
        raise


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
    on_log: LogCallback | None = None,
) -> TrainResult:
    """Train a model on `data` within the budget; returns losses, throughput, memory and the model.

    Resume by passing `model` (weights loaded), `optimizer_state` and `start_step`. With `eval_at` (ascending
    fractions of the budget, e.g. [1/27, 1/9, 1/3]), evaluate when training reaches each of them instead of every
    eval_interval steps: the tuner's rungs, the same points of the budget for trials of any speed.
    When `interrupt` is set (the CLI sets it on Ctrl-C) the loop stops at the next step boundary, with no final
    evaluation, so the model and optimizer are consistent and can be saved.
    `progress=False` shows no bar; otherwise a bar shows when stderr is a terminal.
    `on_log` receives the training curve (gptcore.curve.CurvePoint): a point at each read-back of the losses, every
    CHECK_EVERY steps (no extra device sync), and one with the validation loss at each evaluation.
    """
    resume = Resume(model, optimizer_state, start_step)
    with tagged(["setup"]) as phase:
        return _train(model_cfg, train_cfg, data, resume, EvalSchedule(train_cfg.eval_interval, eval_at),
                      on_eval=on_eval, progress=progress, kind=kind, interrupt=interrupt, phase=phase,
                      on_log=on_log)


def _setup(model_cfg: ModelConfig, cfg: TrainConfig, data: TokenData, resume: Resume, kind: str,
           phase: list[str]) -> tuple[LanguageModel, StepParts]:
    """Check the inputs, seed, build (or take) the model and its AdamW: what the first step needs."""
    device = hw.resolve_device(cfg.device)
    hw.check_dtype(device, cfg.dtype)
    if model_cfg.vocab_size != data.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} != corpus vocabulary {data.vocab_size}")
    data.check_block_size(model_cfg.block_size)
    torch.manual_seed(cfg.seed)
    hw.reset_peak_memory(device)
    phase[0] = "model build"
    model = (resume.model if resume.model is not None else build_model(model_cfg, kind)).to(device)
    model.train()
    optimizer = configure_optimizer(model, cfg, device)
    if resume.optimizer_state is not None:
        optimizer.load_state_dict(resume.optimizer_state)
    compiling.check_mode(cfg.compile, device)
    # GradScaler keeps small float16 gradients from underflowing; bf16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
    return model, StepParts(model, optimizer, scaler, cfg, device)


@dataclass
class _Run:
    """What the loop works with, built once by _setup: the model, its step, the data, and the run's books."""

    model: LanguageModel
    parts: StepParts
    data: TokenData
    block_size: int
    phase: list[str]
    on_eval: EvalCallback | None
    clock: Clock
    accounts: StepAccounts = field(default_factory=lambda: StepAccounts(["warmup"] * WARMUP_STEPS))
    losses: LossBuffer = field(default_factory=lambda: LossBuffer(CHECK_EVERY))
    history: list[EvalPoint] = field(default_factory=list)
    choice: compiling.Choice | None = None  # None until auto has measured the eager step
    say: Callable[[str], None] = lambda line: None
    on_log: LogCallback | None = None
    tokens_per_step: int = 0
    lr: float = 0.0  # the learning rate of the last step
    logged: tuple[int, float] = (0, 0.0)  # timed steps and seconds at the curve's last point
    held: CurvePoint | None = None  # the last read-back point, until the next: an evaluation at its step joins it

    @property
    def cfg(self) -> TrainConfig:
        return self.parts.cfg

    def budget_used(self, step: int) -> float:
        """Share of the budget used: steps or timed seconds, whichever is further along."""
        cfg = self.cfg
        return max(step / cfg.max_iters if cfg.max_iters else 0.0,
                   self.clock.seconds["train"] / cfg.max_seconds if cfg.max_seconds else 0.0)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, data: TokenData, resume: Resume, schedule: EvalSchedule, *,
           on_eval: EvalCallback | None, progress: bool | None, kind: str, interrupt: threading.Event | None,
           phase: list[str], on_log: LogCallback | None) -> TrainResult:
    model, parts = _setup(model_cfg, cfg, data, resume, kind, phase)
    T = model_cfg.block_size
    tokens_per_step = cfg.batch_size * T * cfg.grad_accum_steps
    next_batch = data.batches("train", cfg.batch_size, T, parts.device, cfg.seed)  # reproducible per seed

    # A bar only on a terminal, even when asked for: redirected, its \r redraws would fill the log.
    show = progress is not False and sys.stderr.isatty()
    bar = tqdm(total=cfg.max_iters, initial=resume.step, unit="step", disable=not show, leave=False, desc="train",
               dynamic_ncols=True)
    run = _Run(model, parts, data, T, phase, on_eval, Clock(parts.device), on_log=on_log,
               tokens_per_step=tokens_per_step)
    if progress is not False:  # the CLI's run says which compile mode it chose; the tuner records it instead
        run.say = lambda line: tqdm.write(line, file=sys.stderr)
    if cfg.compile != "auto":
        _compile(run, compiling.Choice(cfg.compile, f"{cfg.compile}, as asked"))
    step, stopped_by = resume.step, "max_iters"
    try:
        while True:
            stop = _stop_reason(cfg, step, run.clock, interrupt)
            if stop:
                stopped_by = stop
                break
            lr = lr_at(cfg, step, run.budget_used(step))
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            run.lr = lr
            account = run.accounts.next()
            step += 1
            last = run.losses.add(step, train_step(parts, next_batch, phase))
            # The untimed steps wait for the GPU, so none of their queued work leaks into the timed steps.
            seconds = run.clock.book(account, sync=account != "train")
            if run.choice is None and account == "warmup" and not run.accounts.queue:
                _compile(run, _choose(run, step, seconds))  # auto, on the last warm-up step's eager time
            if last is not None:
                rate = tokens_per_step * (step - resume.step) / max(run.clock.spent_stepping, 1e-9)
                bar.set_postfix(loss=f"{last:.3f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            if schedule.due(step, run.budget_used(step)):
                run.losses.flush()
                if _evaluate(run, step):
                    stopped_by = "callback"
                    break
            elif last is not None:  # the losses were just read back: a point of the curve, at no extra sync
                _log(run, step)
        run.losses.flush()
        run.clock.book(run.accounts.current, sync=True)
        if stopped_by not in ("callback", "interrupted"):
            _evaluate(run, step)  # the final figures are always measured at the end of the budget
        elif run.losses.unlogged:
            _log(run, step)  # the losses read back since the last point
    finally:
        bar.close()
        _release(run)  # the curve's last read-back point, whatever ended the run
    return _result(run, step - resume.step, tokens_per_step, stopped_by)


def _choose(run: _Run, step: int, step_seconds: float) -> compiling.Choice:
    """auto's choice for the rest of the run, from the eager step time just measured."""
    cfg = run.cfg
    steps_left = cfg.max_iters - step if cfg.max_iters is not None else None
    seconds_left = cfg.max_seconds - run.clock.seconds["train"] if cfg.max_seconds is not None else None
    return compiling.choose(run.parts.device, step_seconds, steps_left, seconds_left)


def _compile(run: _Run, choice: compiling.Choice) -> None:
    """Run the next steps in `choice`'s mode; the steps that compile or capture go to the compile account."""
    run.choice = choice
    run.say(f"compile: {choice.reason}")
    if choice.mode == "none":
        return
    run.parts.model = compiling.compile_model(run.model, choice.mode)
    run.parts.graphs = choice.mode == "graphs"
    if run.parts.graphs:
        # A .grad first allocated by a captured backward lives in the graphs' memory pool, and the next replay
        # overwrites it: gradient accumulation would add to garbage (torch/_inductor/cudagraph_trees.py says so in
        # its error). Grads allocated here, outside capture, are accumulated into in place instead.
        for p in run.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    run.accounts.queue.extendleft(["compile"] * compiling.CAPTURE_STEPS[choice.mode])


def _evaluate(run: _Run, step: int) -> bool:
    """Evaluate, record, call on_eval; True if the callback asked to stop."""
    run.phase[0] = "eval"
    run.clock.book(run.accounts.current, sync=True)  # the GPU's queued steps belong to the steps, not evaluation
    val = estimate_loss(run.model, run.data, run.cfg, run.block_size, run.parts.device)
    if not all(math.isfinite(v) for v in val.values()):
        raise Diverged(step, val["val"])
    train_loss = val["train"] if "train" in val else run.losses.mean_since_eval()
    run.losses.recent.clear()
    run.history.append(EvalPoint(step, train_loss, val["val"], run.clock.seconds["train"]))
    _log(run, step, val["val"])  # before the callback: a trial pruned (or killed) there keeps this point
    stop = run.on_eval is not None and run.on_eval(step, train_loss, val["val"]) == "stop"
    run.clock.book("eval", sync=True)  # the callback (the tuner's report and prune decision) is evaluation overhead
    return stop


def _log(run: _Run, step: int, val_loss: float | None = None) -> None:
    """The curve's next point: the losses read back since the last one, the rate since then; one point per step
    (a run whose budget ends on a read-back step evaluates at that step: the two make one point)."""
    if run.on_log is None:
        return
    timed, seconds = run.accounts.counts["train"], run.clock.seconds["train"]
    steps, spent = timed - run.logged[0], seconds - run.logged[1]
    rate = steps * run.tokens_per_step / spent if steps > 0 and spent > 0 else None
    run.logged = (timed, seconds)
    point = CurvePoint(step=step, tokens=step * run.tokens_per_step, train_seconds=seconds,
                       train_loss=run.losses.take_unlogged(), val_loss=val_loss, lr=run.lr, tokens_per_s=rate)
    if run.held is not None and run.held.step == step:
        point = replace(run.held, val_loss=val_loss)
        run.held = None
    _release(run)
    if val_loss is None:
        run.held = point
    else:
        run.on_log(point)


def _release(run: _Run) -> None:
    """Give on_log the read-back point it holds, if any."""
    if run.on_log is not None and run.held is not None:
        point, run.held = run.held, None
        run.on_log(point)


def _stop_reason(cfg: TrainConfig, step: int, clock: Clock, interrupt: threading.Event | None) -> str | None:
    """Why the loop stops before this step (max_iters, max_seconds, interrupted), or None to go on."""
    if cfg.max_iters is not None and step >= cfg.max_iters:
        return "max_iters"
    if cfg.max_seconds is not None and clock.seconds["train"] >= cfg.max_seconds:
        return "max_seconds"
    if interrupt is not None and interrupt.is_set():
        return "interrupted"
    return None


def _result(run: _Run, steps: int, tokens_per_step: int, stopped_by: str) -> TrainResult:
    """The run's figures: tokens/s over the timed steps only, MFU where the device's peak is known."""
    tokens = steps * tokens_per_step
    clock, device = run.clock, run.parts.device
    timed_steps, train_s = run.accounts.counts["train"], clock.seconds["train"]
    if timed_steps > 0 and train_s > 0:
        tokens_per_s = timed_steps * tokens_per_step / train_s
    else:  # the run ended inside its untimed steps: the only rate there is includes the one-time costs
        seconds = train_s + clock.untimed
        tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    peak = hw.peak_flops(device, run.cfg.dtype)
    flops = getattr(run.model, "flops_per_token", None)
    mfu = flops(run.block_size) * tokens_per_s / peak if (peak and flops) else None
    choice = run.choice or compiling.Choice("none", "auto: none, the run ended within its warm-up steps")
    return TrainResult(
        history=run.history, steps=steps, tokens=tokens, train_seconds=train_s, eval_seconds=clock.seconds["eval"],
        tokens_per_s=tokens_per_s, peak_memory=hw.peak_memory(device), n_params=run.model.num_params(),
        mfu=mfu, device=str(device), stopped_by=stopped_by, warmup_steps=run.accounts.counts["warmup"],
        warmup_seconds=clock.seconds["warmup"], compile=choice.mode, compile_reason=choice.reason,
        compile_seconds=clock.seconds["compile"], model=run.model, optimizer=run.parts.optimizer,
    )
