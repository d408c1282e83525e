"""Checkpoints: a folder of safetensors weights, JSON configs and vocabulary, optimizer state and step.

Nothing here unpickles: weights are safetensors, the optimizer state is loaded with weights_only=True.
A save writes a temporary folder and renames it into place, so a crash mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptcore import config as C
from gptcore.errors import UserError
from gptcore.files import atomic_dir
from gptcore.model import LanguageModel, build_model
from gptcore.tokenizer import CharTokenizer

FORMAT = 1
WEIGHTS, OPTIMIZER, STATE = "model.safetensors", "optimizer.pt", "state.json"
CONFIG, VOCAB = "config.json", "vocab.json"


@dataclass
class Checkpoint:
    """Everything needed to sample from a model or to resume its training."""

    model_cfg: C.ModelConfig
    train_cfg: C.TrainConfig
    tokenizer: CharTokenizer
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    step: int
    kind: str = "gpt"
    extra: dict[str, Any] | None = None

    def build_model(self, device: torch.device | str = "cpu") -> LanguageModel:
        """The model with these weights, in eval mode, on `device`."""
        model = build_model(self.model_cfg, self.kind)
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise UserError(f"checkpoint weights do not match its config: {' '.join(first[:3])[:300]}") from None
        return model.to(device).eval()


def save_checkpoint(
    path: str | Path,
    model: LanguageModel,
    model_cfg: C.ModelConfig,
    train_cfg: C.TrainConfig,
    tokenizer: CharTokenizer,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    kind: str = "gpt",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temp folder, then rename)."""
    path = Path(path)
    with atomic_dir(path, STATE, "checkpoint") as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": str(FORMAT)})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        (tmp / CONFIG).write_text(json.dumps({**C.to_dict(model_cfg, train_cfg), "kind": kind}, indent=1))
        tokenizer.save(tmp / VOCAB)
        (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, **(extra or {})}, indent=1))
    return path


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file}: missing; not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: unreadable or truncated ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a JSON object")
    return data


def load_checkpoint(path: str | Path, *, with_optimizer: bool = True) -> Checkpoint:
    """Read and check a checkpoint folder; every problem is a UserError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    state = _read_json(path / STATE)
    if state.get("format") != FORMAT:
        raise UserError(f"{path / STATE}: unknown checkpoint format {state.get('format')!r}")
    cfg = _read_json(path / CONFIG)
    try:
        model_cfg, train_cfg = C.from_dict({k: cfg[k] for k in ("model", "train") if k in cfg})
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path / CONFIG}: bad config ({exc})") from None
    tokenizer = CharTokenizer.load(path / VOCAB)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise UserError(
            f"{path}: vocabulary has {tokenizer.vocab_size} characters but the model expects {model_cfg.vocab_size}"
        )
    try:
        weights = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"{path / WEIGHTS}: missing; not a complete checkpoint") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path / WEIGHTS}: unreadable or truncated ({exc})") from None
    optimizer_state = None
    if with_optimizer and (path / OPTIMIZER).exists():
        try:
            # weights_only=True: only tensors and plain containers, never arbitrary objects.
            optimizer_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged zip/pickle stream
            raise UserError(f"{path / OPTIMIZER}: unreadable or truncated ({type(exc).__name__})") from None
    ckpt = Checkpoint(
        model_cfg=model_cfg, train_cfg=train_cfg, tokenizer=tokenizer, model_state=weights,
        optimizer_state=optimizer_state, step=int(state.get("step", 0)), kind=cfg.get("kind", "gpt"),
        extra={k: v for k, v in state.items() if k not in ("format", "step")},
    )
    ckpt.build_model()  # fail now, clearly, on wrong shapes rather than later in the caller
    return ckpt
