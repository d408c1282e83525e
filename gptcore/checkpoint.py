"""Checkpoints: a folder of safetensors weights, JSON configs, the tokenizer, optimizer state and step.

vocab.json holds the tokenizer's to_dict() (char or BPE, with or without EOS).

Nothing here unpickles: weights are safetensors, the optimizer state is loaded with weights_only=True.
A save goes through gptcore.files.atomic_dir: killed at any instant, the folder holds the previous checkpoint
or the new one (recovered by the next load or save if the kill fell between two renames), never a mix.
state.json, written last, records the step and a fingerprint of the vocabulary, so an edited vocab.json is
refused rather than silently decoding garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptcore import config as C
from gptcore.errors import UserError
from gptcore.files import (
    JSON_MAX_BYTES,
    atomic_dir,
    check_output_dir,
    contained_file,
    fault_point,
    read_json_object,
    recover,
)
from gptcore.layout import CHECKPOINT_FILES, CONFIG, OPTIMIZER, STATE, VOCAB, WEIGHTS
from gptcore.memory import check_fits
from gptcore.model import LanguageModel
from gptcore.tokenizer import Tokenizer, load_tokenizer
from gptcore.usermodel import build_model, check_named

FORMAT = 1


@dataclass
class Checkpoint:
    """Everything needed to sample from a model or to resume its training."""

    model_cfg: C.ModelConfig
    train_cfg: C.TrainConfig
    tokenizer: Tokenizer
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    step: int
    kind: str = "gpt"
    extra: dict[str, Any] | None = None
    path: Path | None = None

    def build_model(self, device: torch.device | str = "cpu") -> LanguageModel:
        """The model with these weights, in eval mode, on `device`."""
        where = self.path / WEIGHTS if self.path else "checkpoint"
        # Built on the CPU first: a crafted config must not allocate for minutes, or fail. (A class of the user's
        # own is built only when the user named it: gptcore's formula says nothing of its size.)
        if self.kind == "gpt" and not self.model_cfg.model:
            check_fits(self.model_cfg, str(self.path / CONFIG if self.path else "checkpoint"), training=False)
        try:
            model = build_model(self.model_cfg, self.kind)
        except ValueError as exc:  # an unknown model kind
            raise UserError(f"{self.path / CONFIG if self.path else 'checkpoint'}: {exc}") from None
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise UserError(f"{where}: weights do not match its config: {' '.join(first[:3])[:300]}") from None
        return model.to(device).eval()


def vocab_fingerprint(vocab: dict[str, Any]) -> str:
    """sha256 of a stored tokenizer (its to_dict()): any edit of vocab.json changes it."""
    if vocab.keys() == {"type", "chars"} and vocab["type"] == "char" and isinstance(vocab["chars"], list):
        # A char vocabulary without EOS: the form checkpoints recorded before other tokenizers existed.
        return hashlib.sha256("".join(map(str, vocab["chars"])).encode("utf-8", "surrogatepass")).hexdigest()
    blob = json.dumps(vocab, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def check_save_path(path: str | Path) -> None:
    """Refuse now, before any training, a place where a checkpoint could not be saved."""
    check_output_dir(Path(path), "checkpoint", STATE, CHECKPOINT_FILES)


def save_checkpoint(
    path: str | Path,
    model: LanguageModel,
    model_cfg: C.ModelConfig,
    train_cfg: C.TrainConfig,
    tokenizer: Tokenizer,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    kind: str = "gpt",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temp folder, then rename); a full disk is a one-line UserError."""
    path = Path(path)
    # The size is told so that a full disk (which torch.save reports as a RuntimeError) is named as one.
    with atomic_dir(path, STATE, "checkpoint", CHECKPOINT_FILES, need=_checkpoint_bytes(model, optimizer)) as tmp:
        _write(tmp, model, model_cfg, train_cfg, tokenizer, optimizer, step, kind, extra)
    return path


def _checkpoint_bytes(model: LanguageModel, optimizer: torch.optim.Optimizer | None) -> int:
    """About what a checkpoint of this model (and optimizer) takes on disk: its tensors, plus the JSON files."""
    tensors = list(model.state_dict().values())
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) + 2**16


def _write(tmp: Path, model: LanguageModel, model_cfg: C.ModelConfig, train_cfg: C.TrainConfig,
           tokenizer: Tokenizer, optimizer: torch.optim.Optimizer | None, step: int, kind: str,
           extra: dict[str, Any] | None) -> None:
    """The checkpoint's files, into the (temporary) folder `tmp`."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": str(FORMAT)})
    fault_point("checkpoint:weights")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        fault_point("checkpoint:optimizer")
    (tmp / CONFIG).write_text(json.dumps({**C.to_dict(model_cfg, train_cfg), "kind": kind}, indent=1))
    fault_point("checkpoint:config")
    tokenizer.save(tmp / VOCAB)
    fault_point("checkpoint:vocab")
    # state.json last: atomic_dir's recovery and check_replaceable take a folder holding it as a checkpoint.
    (tmp / STATE).write_text(json.dumps(
        {**(extra or {}), "format": FORMAT, "step": step, "vocab_sha256": vocab_fingerprint(tokenizer.to_dict())},
        indent=1))


def _check_files(path: Path) -> None:
    """Each file of a checkpoint folder is a regular file inside it (no link out of it, no device); JSON bounded."""
    for name in CHECKPOINT_FILES:
        if os.path.lexists(path / name):
            contained_file(path, name, "a checkpoint file", JSON_MAX_BYTES if name.endswith(".json") else None)


def _read_json(file: Path) -> dict[str, Any]:
    return read_json_object(file, "a checkpoint's JSON object", missing="missing; not a complete checkpoint")


def load_checkpoint(path: str | Path, *, with_optimizer: bool = True, model: str | None = None,
                    user_models: bool = True) -> Checkpoint:
    """Read and check a checkpoint folder; every problem is a UserError naming the file.

    A checkpoint of a model class of the user's own (its config's `model`) is built only when `model` (the
    command's --model) names that class: a checkpoint never runs code the user did not name (usermodel.check_named).
    A command that works on gptcore's models only passes user_models=False: such a checkpoint is refused.
    """
    path = Path(path)
    recover(path, STATE)  # a save killed between its two renames is finished here
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    _check_files(path)
    state = _read_json(path / STATE)
    if state.get("format") != FORMAT:
        raise UserError(f"{path / STATE}: unknown checkpoint format {state.get('format')!r}")
    step = state.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path / STATE}: step must be a non-negative integer, got {step!r}")
    cfg = _read_json(path / CONFIG)
    try:
        model_cfg, train_cfg = C.from_dict({k: cfg[k] for k in ("model", "train") if k in cfg})
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path / CONFIG}: bad config ({exc})") from None
    if model_cfg.model and not user_models:
        raise UserError(f"{path}: a checkpoint of your model class {model_cfg.model}; this command works on "
                        f"gptcore's GPT only")
    check_named(model, model_cfg.model, str(path))
    tokenizer = load_tokenizer(path / VOCAB)
    expected = state.get("vocab_sha256")  # absent in checkpoints saved before it was recorded
    if expected is not None and vocab_fingerprint(_read_json(path / VOCAB)) != expected:
        raise UserError(f"{path / VOCAB}: not the vocabulary this checkpoint was trained with (edited or replaced)")
    if tokenizer.vocab_size != model_cfg.vocab_size:
        unit = "characters" if tokenizer.to_dict()["type"] == "char" else "tokens"
        raise UserError(
            f"{path}: vocabulary has {tokenizer.vocab_size} {unit} but the model expects {model_cfg.vocab_size}"
        )
    try:
        weights = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"{path / WEIGHTS}: missing; not a complete checkpoint") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path / WEIGHTS}: unreadable or truncated ({exc})") from None
    ckpt = Checkpoint(
        model_cfg=model_cfg, train_cfg=train_cfg, tokenizer=tokenizer, model_state=weights,
        optimizer_state=None, step=step, kind=cfg.get("kind", "gpt"),
        extra={k: v for k, v in state.items() if k not in ("format", "step", "vocab_sha256")}, path=path,
    )
    model = ckpt.build_model()  # fail now, clearly, on an unknown kind or wrong shapes rather than in the caller
    if with_optimizer and (path / OPTIMIZER).exists():
        try:
            # weights_only=True: only tensors and plain containers, never arbitrary objects.
            ckpt.optimizer_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged zip/pickle stream
            raise UserError(f"{path / OPTIMIZER}: unreadable or truncated ({type(exc).__name__})") from None
        _check_optimizer_state(path / OPTIMIZER, ckpt.optimizer_state, model, train_cfg)
    return ckpt


def _check_optimizer_state(file: Path, state: Any, model: LanguageModel, train_cfg: C.TrainConfig) -> None:
    """Refuse, before any training, an optimizer state saved for another model (a copied optimizer.pt)."""
    from gptcore.train import configure_optimizer  # the optimizer training will load this state into

    optimizer = configure_optimizer(model, train_cfg, torch.device("cpu"))
    try:
        optimizer.load_state_dict(state)
    except Exception as exc:  # ValueError for other group sizes; Key/Type errors for a state of another shape
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{file}: optimizer state does not fit this model ({detail})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise UserError(f"{file}: optimizer state does not fit this model ({key} of shape "
                                    f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)})")
