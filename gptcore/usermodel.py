"""Your own model class (--model FILE.py:Class or --model package.module:Class): load it, check it, build it.

The protocol (docs/your-model.md):
- a torch.nn.Module subclass built as `Class(config)`, where `config` has the attributes vocab_size, block_size,
  n_embed, n_head, n_layer, dropout, and one per field the class declares as `config_fields = {"name": default}`;
- forward(idx, targets=None) -> (logits, loss): idx and targets (B, T) int64, logits (B, T, V) (or (B*T, V) when
  targets are given, as the course reshapes them), loss a scalar tensor (None without targets);
- optional flops_per_token(T) -> training FLOPs per token (MFU is reported only then);
- optional generate(idx, max_new_tokens, temperature=..., top_k=..., eos_id=..., generator=...) -> (B, T + new);
  a generate that does not take those keywords (the course's) is left aside and gptcore's sampling loop is used.

Code runs only from the file or module the user named: a checkpoint or config that names a model is built only
when --model names the same one (same_model). A file is imported by its path under a private module name, once per
process. Everything wrong with a class is a UserError naming the --model value, so the CLIs say it in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import sys
import traceback
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from gptcore import model as gpt
from gptcore.config import ModelConfig, split_model_spec
from gptcore.errors import UserError

# What every user class is built from; the fields it declares come on top.
SEARCHED = ("vocab_size", "block_size", "n_embed", "n_head", "n_layer", "dropout")
# The probe's shape: small enough to build and step in well under a second, dropout on so that it is exercised.
PROBE_SHAPE = dict(vocab_size=13, block_size=8, n_embed=32, n_head=2, n_layer=1, dropout=0.1)
PROBE_BATCH = 2
# The keywords gptcore.sample passes to generate: a user's generate that takes them all is used as it is.
GENERATE_KEYWORDS = ("temperature", "top_k", "eos_id", "generator")

_CLASSES: dict[str, type] = {}  # spec -> its (adapted) class: each file or module is imported once per process


def build_model(cfg: ModelConfig, kind: str = "gpt") -> nn.Module:
    """The model `cfg` describes: gptcore's (gptcore.model.build_model, `kind` gpt or bigram) or the user's class."""
    if not cfg.model:
        return gpt.build_model(cfg, kind)
    if kind != "gpt":
        raise UserError(f"--model {cfg.model}: a model class of your own cannot be the {kind} baseline")
    if cfg.vocab_size <= 0:
        raise ValueError("vocab_size must be set (> 0) to build a model")
    cls = load_class(cfg.model)
    model = _call(cfg.model, "building it", lambda: cls(user_config(cfg, cls)))
    if not hasattr(model, "block_size"):  # gptcore's sampling loop crops the context to it
        model.block_size = cfg.block_size
    return model


def user_config(cfg: ModelConfig, cls: type) -> SimpleNamespace:
    """What the class is built from: the six searched fields, then its declared fields (defaults < cfg.extra)."""
    declared = declared_fields(cls, cfg.model)
    unknown = sorted(set(cfg.extra) - set(declared))
    if unknown:
        raise UserError(f"--model {cfg.model}: the config sets {', '.join(unknown)}, which the class does not "
                        f"declare in config_fields (it declares {', '.join(declared) or 'none'})")
    return SimpleNamespace(**{name: getattr(cfg, name) for name in SEARCHED}, **{**declared, **cfg.extra})


def declared_fields(cls: type, spec: str) -> dict[str, Any]:
    """The class's own config fields and their defaults (its `config_fields`), each checked."""
    declared = getattr(cls, "config_fields", {})
    if not isinstance(declared, dict):
        raise UserError(f"--model {spec}: config_fields must be a dict of field names and default values, got "
                        f"{type(declared).__name__}")
    taken = {f.name for f in fields(ModelConfig)}
    for name, value in declared.items():
        if not isinstance(name, str) or not name.isidentifier() or name in taken:
            raise UserError(f"--model {spec}: config_fields: {name!r} must be a Python name that is not one of "
                            f"gptcore's model fields ({', '.join(sorted(taken))})")
        if not isinstance(value, (bool, int, float, str)) or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"--model {spec}: config_fields: {name} must default to a finite number, a string or "
                            f"True/False, got {value!r}")
    return dict(declared)


def same_model(named: str | None, recorded: str) -> bool:
    """Whether the --model the user `named` is the model a config or checkpoint `recorded` (a file by its path)."""
    if not named or not recorded:
        return not named and not recorded
    (a, a_cls), (b, b_cls) = split_model_spec(named), split_model_spec(recorded)
    if a_cls != b_cls or a.endswith(".py") != b.endswith(".py"):
        return False
    return Path(a).resolve() == Path(b).resolve() if a.endswith(".py") else a == b


def check_named(named: str | None, recorded: str, where: str) -> None:
    """Refuse to build a model a checkpoint names unless --model names it too: its code is never run otherwise
    (a downloaded checkpoint must not run a file the user did not choose); nor another class than it holds."""
    if same_model(named, recorded):
        return
    if not recorded:
        raise UserError(f"{where}: holds gptcore's own GPT, not --model {named}: leave --model out")
    also = f" (not --model {named})" if named else ""
    raise UserError(f"{where}: its model is the class {recorded}, whose code runs only when you name it: pass "
                    f"--model {recorded}{also}")


def load_class(spec: str) -> type:
    """The class `spec` names, loaded once per process and adapted to gptcore (see _adapt); UserError otherwise."""
    if spec in _CLASSES:
        return _CLASSES[spec]
    try:
        target, name = split_model_spec(spec)
    except ValueError as exc:
        raise UserError(f"--model: {exc}") from None
    module = _import_file(spec, Path(target)) if target.endswith(".py") else _import_module(spec, target)
    cls = getattr(module, name, None)
    if cls is None:
        raise UserError(f"--model {spec}: {target} has no class {name}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"--model {spec}: {name} is not a class derived from torch.nn.Module")
    forward = getattr(cls, "forward", None)
    if forward is nn.Module.forward or not _takes(forward, 3):
        raise UserError(f"--model {spec}: {name} needs forward(self, idx, targets=None) -> (logits, loss)")
    declared_fields(cls, spec)
    _CLASSES[spec] = _adapt(cls)
    return _CLASSES[spec]


def _import_file(spec: str, path: Path) -> Any:
    """Import a .py file by its path under a private module name (never shadowing an importable module)."""
    if not path.is_file():
        raise UserError(f"--model {spec}: {path}: no such file")
    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    module_name = f"_gptcore_user_model_{key}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"--model {spec}: {path}: not importable as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a class's module up here
    try:
        _call(spec, f"importing {path}", lambda: loader_spec.loader.exec_module(module))
    except UserError:
        del sys.modules[module_name]
        raise
    return module


def _import_module(spec: str, target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):  # the named module (or its package) is missing, not its import
            raise UserError(f"--model {spec}: no module named {exc.name} (is its folder on PYTHONPATH?)") from None
        raise UserError(f"--model {spec}: importing {target} raised {_describe(exc, None)}") from None
    except Exception as exc:
        raise UserError(f"--model {spec}: importing {target} raised {_describe(exc, None)}") from None


def _takes(function: Any, n: int) -> bool:
    """Whether `function` (unbound: self first) can be called with self and n - 1 more positional arguments."""
    try:
        inspect.signature(function).bind(*([None] * n))
    except (TypeError, ValueError):
        return False
    return True


def _adapt(cls: type) -> type:
    """A subclass that gptcore can train and sample like its own models, changing nothing the user wrote:
    - forward gets contiguous idx and targets (training's are strided views of one (B, T + 1) window, which the
      course's targets.view(B*T) cannot take; the copy is B*T integers);
    - num_params, when the class has none (gptcore reports it);
    - gptcore's sampling loop as generate, unless the class's own takes gptcore's keywords."""
    ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}

    def forward(self: nn.Module, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        return cls.forward(self, idx.contiguous(), None if targets is None else targets.contiguous())

    ns["forward"] = forward
    if not hasattr(cls, "num_params"):
        ns["num_params"] = gpt.LanguageModel.num_params
    own = getattr(cls, "generate", None)
    if own is None or not _generate_takes_keywords(own):
        ns["generate"] = gpt.LanguageModel.generate
    return type(cls.__name__, (cls,), ns)


def _generate_takes_keywords(function: Any) -> bool:
    try:
        inspect.signature(function).bind(None, None, 1, **{k: None for k in GENERATE_KEYWORDS})
    except (TypeError, ValueError):
        return False
    return True


def _call(spec: str, what: str, fn: Any) -> Any:
    """fn(), with any exception but a UserError said in one line naming --model, what it was doing and where in
    the user's file it was raised."""
    try:
        return fn()
    except UserError:
        raise
    except SyntaxError as exc:
        raise UserError(f"--model {spec}: {what}: syntax error at {Path(exc.filename or '?').name}:{exc.lineno}: "
                        f"{exc.msg}") from None
    except Exception as exc:
        target = split_model_spec(spec)[0]
        raise UserError(f"--model {spec}: {what} raised {_describe(exc, target)}") from None


def _describe(exc: BaseException, target: str | None) -> str:
    """'TypeError: message (at my_gpt.py:42)': the exception and the deepest line of the user's code it passed."""
    text = str(exc).strip().splitlines()
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if target and (f.filename.endswith(target.replace(".", "/") + ".py")
                                             or (target.endswith(".py") and
                                                 Path(f.filename).resolve() == Path(target).resolve()))]
    if mine:
        where = f" (at {Path(mine[-1].filename).name}:{mine[-1].lineno})"
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}{where}"


def probe(spec: str) -> dict[str, Any]:
    """Build the class at PROBE_SHAPE and train one step of a tiny batch: its declared fields and what it offers,
    or a UserError saying in one line what is wrong (shapes, a loss that is no finite scalar, no gradients...)."""
    cls = load_class(spec)
    declared = declared_fields(cls, spec)
    cfg = ModelConfig(model=spec, **PROBE_SHAPE)
    torch.manual_seed(0)
    model = build_model(cfg)
    B, T, V = PROBE_BATCH, cfg.block_size, cfg.vocab_size
    window = torch.randint(0, V, (B, T + 1))
    idx, targets = window[:, :-1], window[:, 1:]  # (B, T) strided views, as training passes them
    model.train()
    logits, loss = _outputs(spec, _call(spec, "forward(idx, targets)", lambda: model(idx, targets)))
    if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.dim() <= 1 and loss.is_floating_point()):
        raise UserError(f"--model {spec}: forward(idx, targets) must return the loss as a scalar tensor, got "
                        f"{_shape_of(loss)}")
    if not math.isfinite(loss.item()):
        raise UserError(f"--model {spec}: the loss of a freshly built model is {loss.item()}, not a finite number")
    if tuple(logits.shape) not in ((B, T, V), (B * T, V)):
        raise UserError(f"--model {spec}: logits must be (B, T, vocab_size) = {(B, T, V)}, got "
                        f"{tuple(logits.shape)}")
    if not loss.requires_grad:
        raise UserError(f"--model {spec}: the loss does not depend on any parameter (no gradient can flow)")
    _call(spec, "loss.backward()", loss.backward)
    if not any(p.grad is not None for p in model.parameters()):
        raise UserError(f"--model {spec}: no parameter received a gradient from loss.backward()")
    model.eval()
    with torch.no_grad():
        logits, _ = _outputs(spec, _call(spec, "forward(idx)", lambda: model(idx)))
    if tuple(logits.shape) != (B, T, V):
        raise UserError(f"--model {spec}: forward(idx) without targets must return logits (B, T, vocab_size) = "
                        f"{(B, T, V)}, got {tuple(logits.shape)}")
    return {"spec": spec, "class": cls.__name__, "fields": declared, "parameters": model.num_params(),
            "flops_per_token": _check_flops(spec, model, T),
            "generate": "gptcore" if "generate" in vars(type(model)) else "own"}  # _adapt put gptcore's there


def _outputs(spec: str, out: Any) -> tuple[torch.Tensor, Any]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and torch.is_tensor(out[0])):
        raise UserError(f"--model {spec}: forward must return a pair (logits, loss), got {_shape_of(out)}")
    return out[0], out[1]


def _shape_of(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__ if value is not None else "None"


def _check_flops(spec: str, model: nn.Module, seq_len: int) -> bool:
    """Whether the class tells its FLOPs per token (checked: a finite positive number); MFU needs it."""
    flops = getattr(model, "flops_per_token", None)
    if flops is None:
        return False
    value = _call(spec, f"flops_per_token({seq_len})", lambda: flops(seq_len))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise UserError(f"--model {spec}: flops_per_token({seq_len}) must return a positive number, got {value!r}")
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m gptcore.usermodel SPEC`: probe SPEC; its result as one JSON line on stdout (the tuner reads it)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m gptcore.usermodel FILE.py:Class|package.module:Class")
    with contextlib.redirect_stdout(sys.stderr):  # the user's prints must not mix with the JSON line
        result = probe(args[0])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from gptcore.cliutil import console

    console(main, "python -m gptcore.usermodel")
