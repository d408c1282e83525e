"""Search parameters beyond the six: any ModelConfig/TrainConfig field, or a field a user's model declares, drawn
as an integer, a float or one of a list of choices. The format, the same in a space file and in `--param
NAME=SPEC` (tune.core.space.parse_param_flag), defined here once:

    "dropout": [0.0, 0.3]                                a range, drawn as the field's type: a float uniformly,
                                                         an int as integers
    "weight_decay": {"float": [1e-3, 0.3], "log": true}  a float, log-uniform
    "grad_accum_steps": {"int": [1, 4], "step": 1}       integers (optional "step": N, "log": true)
    "activation": {"choice": ["relu", "gelu"]}           one of these (strings, numbers or true/false); a list of
                                                         strings or booleans is a choice too: ["relu", "gelu"]
    "dropout": 0.1                                       one value: every trial trains it (pinned)
    "beta2": [0.9, 0.999]                                AdamW's betas, searched one element each: beta1, beta2

Each parameter is drawn under its own name in Optuna (the six keep theirs: log2(batch_size), ...), its value goes
into the trial's model config (ModelConfig fields), its train config (TrainConfig fields; beta1/beta2 into
`betas`) or, for a user model's declared fields, the model config's `extra` dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import optuna

from gptcore.config import INT_MAX, ModelConfig, TrainConfig
from gptcore.errors import UserError

# The six: tune.core.space draws them (powers of two, multiples of 64, a log-uniform learning rate).
SIX = ("batch_size", "block_size", "n_embed", "n_head", "n_layer", "learning_rate")
# Fields the tuner sets itself, the same in every trial of a study: searching them would change what a trial
# means (its budget, its evaluation, its device) rather than which configuration trains best.
OWNED = {
    "vocab_size": "the corpus sets it",
    "max_iters": "the target budget sets it (--budget)",
    "max_seconds": "the target budget sets it (--budget)",
    "eval_interval": "the rungs set the evaluations",
    "eval_iters": "every trial is judged on the same validation windows",
    "eval_batch_size": "every trial is judged on the same validation windows",
    "eval_train_split": "every trial is judged on the same validation windows",
    "lr_decay": "--schedule sets it",
    "dtype": "--dtype sets it",
    "compile": "--compile sets it",
    "device": "--device sets it",
    "seed": "--seed sets it",
    "betas": "search its elements instead: beta1, beta2",
    "model": "--model sets it",
    "extra": "search the model's declared fields by their own names",
}
# gptcore's GPT's own architecture fields: a --model class is built from the six and the fields it declares, so
# searching one of these under --model would change nothing it trains.
GPT_ONLY = ("norm", "bias", "activation")
BETAS = {"beta1": 0, "beta2": 1}  # TrainConfig.betas, one searched parameter per element
KINDS = ("int", "float", "choice")


@dataclass(frozen=True)
class Field:
    """A field that may be searched: where its value goes and what a run trains when it is not searched."""

    target: str  # "model", "train" (beta1/beta2: an element of train's betas) or "extra" (a user model's field)
    default: Any  # the config's default (a user model: its declared default)


def searchable(extra_fields: Mapping[str, Any] | None = None) -> dict[str, Field]:
    """Every field that may be searched besides the six, by name; `extra_fields`: a --model class's declared
    fields and their defaults (None: gptcore's GPT, whose architecture fields are searchable too)."""
    out: dict[str, Field] = {}
    for target, cls in (("model", ModelConfig), ("train", TrainConfig)):
        for f in fields(cls):
            if f.name not in OWNED and f.name not in SIX and f.default is not MISSING and not (
                    extra_fields is not None and f.name in GPT_ONLY):  # a user's class: see GPT_ONLY
                out[f.name] = Field(target, f.default)
    betas = TrainConfig().betas
    out.update({name: Field("train", betas[i]) for name, i in BETAS.items()})
    for name, default in (extra_fields or {}).items():
        if name in out or name in OWNED or name in SIX or name in GPT_ONLY:
            raise ValueError(f"the model's field {name!r} has the name of a config field")
        out[name] = Field("extra", default)
    return out


def plain(value: Any) -> Any:
    """A value as plain Python (numpy's int64 and bool_ read from a table are not): what the storage's JSON
    holds."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def is_number(v: object) -> bool:
    """A finite int or float as a bound or a value: JSON's true is an int to Python and Infinity a float."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    """Equal and both booleans or neither (True == 1 in Python, but a choice of true is not a choice of 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@dataclass(frozen=True)
class Param:
    """One searched field beyond the six."""

    name: str
    kind: str  # "int", "float" or "choice"
    target: str  # Field.target
    default: Any  # Field.default: what a run trains when the field is not searched (before the tuner's own)
    low: float = 0
    high: float = 0
    step: int = 1  # int only
    log: bool = False  # int and float
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw a value, as the Optuna parameter of the field's own name."""
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def allows(self, value: Any) -> bool:
        """Whether suggest can draw `value` (a warm start enqueues only such configurations)."""
        value = plain(value)
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choices)
        if not is_number(value) or not self.low <= value <= self.high:
            return False
        return self.kind == "float" or (value == int(value) and (int(value) - int(self.low)) % self.step == 0)

    def coerce(self, value: Any) -> Any:
        """A value read from a table as this parameter's type (an int read as 2.0 is 2); None when missing."""
        value = plain(value)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None
        if self.kind == "int" and is_number(value) and value == int(value):
            return int(value)
        if self.kind == "choice" and isinstance(value, float) and value.is_integer() and not any(
                isinstance(c, float) for c in self.choices):
            return int(value)  # a column of int choices with a blank in it reads as floats
        if self.kind == "choice" and isinstance(value, str) and value in ("True", "False") and any(
                isinstance(c, bool) for c in self.choices):
            return value == "True"
        return value

    def to_json(self) -> dict[str, Any]:
        """The space file's form of this parameter (what a study records in its fingerprint and settings)."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.kind == "int" and self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out

    def describe(self) -> tuple[str, str]:
        """(values, how drawn) for the space's table."""
        if self.kind == "choice":
            return ", ".join(_shown(c) for c in self.choices), "one of these"
        if self.kind == "int":
            how = "integers" + (f" in steps of {self.step}" if self.step != 1 else "") + (", log-uniform"
                                                                                        if self.log else "")
            return f"{int(self.low)} .. {int(self.high)}", how
        return f"{self.low:g} .. {self.high:g}", "log-uniform" if self.log else "uniform"

    def place(self, value: Any, model: dict[str, Any], train: dict[str, Any]) -> None:
        """Put a drawn value where the trial's configs take it."""
        if self.target == "model":
            model[self.name] = value
        elif self.target == "extra":
            model["extra"] = {**model.get("extra", {}), self.name: value}
        elif self.name in BETAS:
            betas = list(train.get("betas", TrainConfig().betas))
            betas[BETAS[self.name]] = value
            train["betas"] = betas  # a list: the job and its record are JSON
        else:
            train[self.name] = value

    def value_in(self, model: dict[str, Any], train: dict[str, Any]) -> Any:
        """The value a run's configs train for this field (the config's default where they do not set it)."""
        if self.target == "model":
            return model.get(self.name, self.default)
        if self.target == "extra":
            return (model.get("extra") or {}).get(self.name, self.default)
        if self.name in BETAS:
            return tuple(train.get("betas", TrainConfig().betas))[BETAS[self.name]]
        return train.get(self.name, self.default)


def _shown(value: Any) -> str:
    """A choice as the space file spells it: true, 0.1, relu."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text[:60] if text.isprintable() else repr(text)[:60]  # a message stays one line


def parse_param(name: Any, spec: Any, where: str, known: Mapping[str, Field] | None) -> Param:
    """One entry of a space file (or a --param flag) checked: its name, its form, its range and a sample of its
    values against the config's own validation; a one-line UserError naming `where`, the field and the rule.
    `known`: searchable(); None reads a study's recorded space back without checking it against any config."""
    shown = repr(name)[:60]
    if known is not None:
        if isinstance(name, str) and name in OWNED:
            raise UserError(f"{where}: {name} is not searched: {OWNED[name]}")
        if isinstance(name, str) and name in GPT_ONLY and name not in known:
            raise UserError(f"{where}: {name} is gptcore's GPT's own field: a --model class is built from the six "
                            f"and the fields it declares (config_fields), so searching it would change nothing")
        if not isinstance(name, str) or name not in known:
            raise UserError(f"{where}: unknown parameter {shown}; expected one of the six ({', '.join(SIX)}) or a "
                            f"field to search: {', '.join(sorted(known))}")
    info = known[name] if known is not None else Field("?", None)
    kind, values, options = _form(name, spec, info.default, where)
    param = _param(name, kind, values, options, info, where)
    if known is not None:
        for value in _sample(param):
            problem = _refused(param, value)
            if problem:
                raise UserError(f"{where}: {name} {_shown(value)}: {problem}")
    return param


def _form(name: str, spec: Any, default: Any, where: str) -> tuple[str, list[Any], dict[str, Any]]:
    """(kind, values, options) of an entry in any of its forms: {"float": [lo, hi], "log": true}, [lo, hi], a
    list of strings or booleans, or one value."""
    numeric = is_number(default)
    if isinstance(spec, dict):
        kinds = [k for k in KINDS if k in spec]
        extra = sorted(set(spec) - set(KINDS) - {"log", "step"})
        if len(kinds) != 1 or extra:
            raise UserError(f"{where}: {name}: expected one of the keys int, float or choice, with log (true/false) "
                            f"and, for int, step; got {', '.join(map(str, spec)) or 'an empty object'}")
        kind = kinds[0]
        values = spec[kind]
        if not isinstance(values, list):
            raise UserError(f"{where}: {name}: {kind} takes a list ([low, high] or the choices), got {values!r}")
        return kind, values, {k: spec[k] for k in ("log", "step") if k in spec}
    if isinstance(spec, list):
        if numeric and len(spec) == 2 and all(map(is_number, spec)):
            return ("int" if isinstance(default, int) else "float"), spec, {}
        if numeric:
            raise UserError(f"{where}: {name}: expected a range [low, high] of numbers, one value, or "
                            f'{{"choice": [...]}}; got {spec!r}'[:300])
        return "choice", spec, {}
    return "choice", [spec], {}  # one value pins the field


def _param(name: str, kind: str, values: list[Any], options: dict[str, Any], info: Field, where: str) -> Param:
    """The Param of a parsed form, its structure checked (not yet its values against the config)."""
    log, step = options.get("log", False), options.get("step", 1)
    if not isinstance(log, bool):
        raise UserError(f"{where}: {name}: log must be true or false, got {log!r}")
    if kind == "choice":
        if options:
            raise UserError(f"{where}: {name}: a choice takes no log or step")
        if not values or not all(isinstance(v, (str, bool)) or is_number(v) for v in values):
            raise UserError(f"{where}: {name}: choices must be a non-empty list of strings, finite numbers or "
                            f"true/false, got {values!r}"[:300])
        if any(_same(a, b) for i, a in enumerate(values) for b in values[:i]):
            raise UserError(f"{where}: {name}: choices must differ, got {values!r}"[:300])
        return Param(name, kind, info.target, info.default, choices=tuple(values))
    if len(values) != 2 or not all(map(is_number, values)):
        raise UserError(f"{where}: {name}: {kind} takes a range [low, high] of finite numbers, got {values!r}"[:300])
    low, high = values
    if not low <= high:
        raise UserError(f"{where}: {name}: the range must have low <= high, got {values}")
    if info.target != "?" and kind == "int" and not (isinstance(info.default, int) and not isinstance(info.default,
                                                                                                      bool)):
        raise UserError(f"{where}: {name}: an integer range for a field that is not an integer (its default is "
                        f"{_shown(info.default)}); use a float range or a choice")
    if kind == "float":
        if "step" in options:
            raise UserError(f"{where}: {name}: step is for int ranges only")
        if log and not low > 0:
            raise UserError(f"{where}: {name}: a log range needs low > 0, got {values}")
        return Param(name, kind, info.target, info.default, float(low), float(high), log=log)
    if low != int(low) or high != int(high) or max(abs(low), abs(high)) > INT_MAX:
        raise UserError(f"{where}: {name}: an int range's bounds must be integers, got {values}")
    low, high = int(low), int(high)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise UserError(f"{where}: {name}: step must be a positive integer, got {step!r}")
    if (high - low) % step:
        raise UserError(f"{where}: {name}: the range {low} .. {high} must be a whole number of steps of {step}")
    if log and (low < 1 or step != 1):
        raise UserError(f"{where}: {name}: a log int range needs low >= 1 and step 1, got {values}, step {step}")
    return Param(name, kind, info.target, info.default, low, high, step, log)


def _sample(param: Param) -> list[Any]:
    """The values checked against the config: every choice; a range's ends and middle."""
    if param.kind == "choice":
        return list(param.choices)
    if param.kind == "int":
        middle = int(param.low) + (int(param.high - param.low) // param.step // 2) * param.step
        return sorted({int(param.low), middle, int(param.high)})
    return [param.low, (param.low + param.high) / 2, param.high]


def _refused(param: Param, value: Any) -> str | None:
    """Why the config would refuse `value` for the field (its own validation's message); None if it takes it."""
    if param.target == "extra":  # a user model's field: its type must be its default's (the model checks more)
        d = param.default
        ok = (d is None or (isinstance(value, bool) if isinstance(d, bool) else
                            is_number(value) if isinstance(d, float) else
                            isinstance(value, int) and not isinstance(value, bool) if isinstance(d, int) else
                            isinstance(value, type(d))))
        return None if ok else f"the model declares it as {type(d).__name__} (default {_shown(d)})"
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    param.place(value, model, train)
    try:
        ModelConfig(**model)
        TrainConfig(**train)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None
