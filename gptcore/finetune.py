"""Fine-tuning a checkpoint on prompt/completion pairs: the vocabulary (EOS, new characters), the loop, the losses.

The loss counts only the completion and its EOS (gptcore.pairs); the validation loss is that loss on held-out
pairs, measured before and after, so the two figures are comparable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gptcore import hardware as hw
from gptcore.config import TrainConfig
from gptcore.errors import Diverged, UserError
from gptcore.model import LanguageModel, grow_vocab
from gptcore.pairs import Example, Pair, collate, completion_loss
from gptcore.train import StepParts, configure_optimizer, lr_at, train_step

# What fine-tuning changes in the checkpoint's training config unless a flag says otherwise: a short run from
# trained weights wants fewer steps and a gentler rate than pre-training from scratch.
DEFAULTS: dict[str, Any] = dict(max_iters=500, learning_rate=3e-4, eval_interval=100, warmup_iters=0,
                                lr_decay="cosine", max_seconds=None)


@dataclass
class FinetuneResult:
    """Losses before and after, steps, and the tuned model with its optimizer (for saving)."""

    val_loss_before: float
    val_loss_after: float
    train_loss: float  # mean over the last eval_interval steps
    steps: int
    n_train: int
    n_val: int
    added_tokens: list[str]  # tokens the vocabulary gained: "<eos>" and any new characters
    history: list[dict[str, float]]
    model: LanguageModel | None = dataclasses.field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary, for the checkpoint's state.json."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "optimizer")}


def fit_vocabulary(model: LanguageModel, tokenizer: Any, pairs: list[Pair], extend_vocab: bool) -> tuple[Any, list]:
    """(tokenizer, added): pairs' new characters added or refused, an EOS added, the model's rows grown to match."""
    missing = tokenizer.unknown("".join(p.prompt + p.completion for p in pairs))
    added: list[str] = []
    if missing and not extend_vocab:
        shown = ", ".join(repr(c) for c in missing[:30]) + (" ..." if len(missing) > 30 else "")
        raise UserError(f"--data: {len(missing)} character(s) not in the checkpoint's vocabulary: {shown} "
                        "(remove them, or pass --extend-vocab to add them)")
    if missing:
        with_chars = getattr(tokenizer, "with_chars", None)  # appends, so every existing id keeps its meaning
        if with_chars is None:
            raise UserError(f"--extend-vocab: this checkpoint's {type(tokenizer).__name__} cannot add characters")
        tokenizer = with_chars(missing)
        added += missing
    if tokenizer.eos_id is None:
        tokenizer = tokenizer.with_eos()
        added.append("<eos>")
    grow_vocab(model, tokenizer.vocab_size)
    return tokenizer, added


def finetune_config(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's training config < fine-tuning DEFAULTS < the flags given."""
    if overrides.get("max_seconds") is not None:
        raise UserError("--max-seconds: fine-tuning runs a step budget; use --max-iters")
    try:
        cfg = dataclasses.replace(base, **{**DEFAULTS, **overrides})
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if cfg.max_iters is None:
        raise UserError("--max-iters: fine-tuning needs a step budget, got none")
    return cfg


def finetune(
    model: LanguageModel,
    train_examples: list[Example],
    val_examples: list[Example],
    cfg: TrainConfig,
    *,
    on_eval: Callable[[int, float, float], None] | None = None,
) -> FinetuneResult:
    """Train on random batches of train_examples for cfg.max_iters steps; completion loss on val before and after."""
    device = hw.resolve_device(cfg.device)
    hw.check_dtype(device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # which examples each step draws: reproducible per seed
    model = model.to(device)
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    before = completion_loss(model, val_examples, eval_batch, device)
    model.train()
    optimizer = configure_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
    parts = StepParts(model, optimizer, scaler, cfg, device)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        picks = torch.randint(len(train_examples), (cfg.batch_size,), generator=gen).tolist()
        return collate([train_examples[i] for i in picks], device)

    recent: list[torch.Tensor] = []
    history: list[dict[str, float]] = []
    train_loss = math.nan
    for step in range(cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, step / cfg.max_iters)
        recent.append(train_step(parts, next_batch).detach())
        last = step + 1 == cfg.max_iters
        if (step + 1) % cfg.eval_interval == 0 or last:
            train_loss = torch.stack(recent).float().mean().item()
            recent.clear()
            if not math.isfinite(train_loss):
                raise Diverged(step + 1, train_loss)
            val = completion_loss(model, val_examples, eval_batch, device)
            history.append({"step": step + 1, "train_loss": train_loss, "val_loss": val})
            if on_eval is not None:
                on_eval(step + 1, train_loss, val)
    after = history[-1]["val_loss"] if history else before
    model.eval()
    return FinetuneResult(val_loss_before=before, val_loss_after=after, train_loss=train_loss, steps=cfg.max_iters,
                          n_train=len(train_examples), n_val=len(val_examples), added_tokens=[], history=history,
                          model=model, optimizer=optimizer)


@torch.no_grad()
def eos_share(model: LanguageModel, tokenizer: Any, pairs: list[Pair], max_new_tokens: int,
              temperature: float = 0.0) -> tuple[float, list[str]]:
    """(share of pairs whose generation ends with EOS within max_new_tokens, the generated answers)."""
    from gptcore.sample import sample_text

    answers, stopped = [], 0
    for pair in pairs:
        text = sample_text(model, tokenizer, pair.prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                           seed=0)
        # Stopped at EOS exactly when fewer than max_new_tokens tokens came out (the EOS is stripped).
        stopped += len(tokenizer.encode(text)) < max_new_tokens
        answers.append(text)
    return stopped / max(len(pairs), 1), answers
