"""The search space: six hyperparameters, ranges sized to the device, always valid configurations; and any other
ModelConfig/TrainConfig field (or a user model's declared field) searched beside them (tune.core.fields)."""

from __future__ import annotations

import argparse
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from gptcore.cliutil import finite_float
from gptcore.config import INT_MAX, from_name, to_dict
from gptcore.errors import UserError
from gptcore.files import read_json_object
from tune.core.fields import Field, Param, is_number, parse_param, plain, searchable

PARAMS = ("batch_size", "block_size", "n_embed", "n_head", "n_layer", "learning_rate")
POW2 = ("batch_size", "block_size", "n_head")  # searched over powers of two
GiB = 2**30


def exponent_name(name: str) -> str:
    """The Optuna parameter a power of two is drawn as: its exponent, named so the dashboard reads it."""
    return f"log2({name})"


def uses_legacy_names(params: list[dict[str, Any]]) -> bool:
    """Whether a study's trials drew their exponents under the old names (log2_batch_size)."""
    return any(k.startswith("log2_") for p in params for k in p)


@dataclass(frozen=True)
class Space:
    """Inclusive (low, high) ranges. Powers of two for batch, block and heads; n_embed in steps of 64. `extra`: any
    other fields searched beside the six (tune.core.fields), none by default."""

    batch_size: tuple[int, int] = (4, 32)
    block_size: tuple[int, int] = (16, 128)
    n_embed: tuple[int, int] = (64, 256)
    n_head: tuple[int, int] = (1, 8)
    n_layer: tuple[int, int] = (1, 4)
    learning_rate: tuple[float, float] = (1e-4, 3e-3)
    extra: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        for name in PARAMS:
            pair = getattr(self, name)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(is_number, pair))):
                raise UserError(f"{name} must be a number or a range [low, high] of numbers, got {pair!r}")
            lo, hi = pair
            if not 0 < lo <= hi:
                raise UserError(f"{name} must be a range 0 < low <= high, got {[lo, hi]}")
            if name != "learning_rate":
                if lo != int(lo) or hi != int(hi) or hi > INT_MAX:
                    raise UserError(f"{name} bounds must be integers, got {[lo, hi]}")
                lo, hi = int(lo), int(hi)  # 8.0 from JSON or a flag is the integer 8 Optuna's suggest_int expects
            object.__setattr__(self, name, (lo, hi))
            if name in POW2 and not (_is_pow2(lo) and _is_pow2(hi)):
                raise UserError(f"{name} bounds must be powers of two, got {[lo, hi]}")
            if name == "n_embed" and (lo % 64 or hi % 64):
                raise UserError(f"n_embed bounds must be multiples of 64, got {[lo, hi]}")
        # n_embed is a multiple of 64 and n_head a power of two <= 64, so n_embed % n_head == 0 always.
        if self.n_head[1] > 64:
            raise UserError(f"n_head must be at most 64, got {self.n_head[1]}")

    @property
    def names(self) -> tuple[str, ...]:
        """The searched parameters: the six, then the extra fields in the order the space file and flags gave."""
        return (*PARAMS, *(p.name for p in self.extra))

    def suggest(self, trial: optuna.Trial, legacy: bool = False) -> dict[str, Any]:
        """Draw the six values, then the extra fields. Powers of two are drawn as integer exponents, so TPE sees
        their order; `legacy`: under the names studies started before 0.2 used (log2_batch_size), so a resumed one
        keeps its history. An extra field is drawn under its own name."""
        out: dict[str, Any] = {}
        for name in POW2:
            lo, hi = getattr(self, name)
            key = f"log2_{name}" if legacy else exponent_name(name)
            out[name] = 2 ** trial.suggest_int(key, int(math.log2(lo)), int(math.log2(hi)))
        out["n_embed"] = trial.suggest_int("n_embed", *self.n_embed, step=64)
        out["n_layer"] = trial.suggest_int("n_layer", *self.n_layer)
        out["learning_rate"] = trial.suggest_float("learning_rate", *self.learning_rate, log=True)
        out = {k: out[k] for k in PARAMS}
        out.update({p.name: p.suggest(trial) for p in self.extra})
        return out

    @staticmethod
    def decode(params: dict[str, Any]) -> dict[str, Any]:
        """The searched values from a trial's stored Optuna parameters (what suggest drew): for rows of trials that
        never recorded anything (their tuner was killed), so every row shows its configuration. An extra field is
        its own parameter: it passes through."""
        out = {}
        for key, value in params.items():
            exponent = key.startswith(("log2(", "log2_"))
            name = key.removeprefix("log2_").removeprefix("log2(").removesuffix(")")
            if name in PARAMS:
                out[name] = 2 ** int(value) if exponent else value
            elif not exponent:
                out[key] = value
        return out

    @staticmethod
    def encode(values: dict[str, Any]) -> dict[str, Any]:
        """The Optuna parameters suggest draws for these values (the inverse of decode): for enqueue_trial. Values
        of extra fields pass through under their own names."""
        out: dict[str, Any] = {}
        for name in PARAMS:
            value = values[name]
            if name in POW2:
                out[exponent_name(name)] = int(math.log2(value))
            else:  # plain Python numbers: the storage writes them as JSON, which has no numpy types
                out[name] = float(value) if name == "learning_rate" else int(value)
        out.update({k: plain(v) for k, v in values.items() if k not in PARAMS})
        return out

    def allows(self, name: str, value: Any) -> bool:
        """Whether suggest can draw `value` for parameter `name` (in range, and a power of two or step of 64)."""
        extra = {p.name: p for p in self.extra}
        if name in extra:
            return extra[name].allows(value)
        lo, hi = getattr(self, name)
        # numbers.Real, not is_number: values read from a table are numpy numbers (int64 is no Python int).
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not lo <= value <= hi:
            return False
        if name == "learning_rate":
            return True
        if value != int(value):
            return False
        if name in POW2:
            return _is_pow2(value)
        return name != "n_embed" or int(value) % 64 == 0

    def contains(self, values: dict[str, Any]) -> bool:
        """Whether suggest can draw exactly these values (a warm start enqueues only such configurations)."""
        return all(self.allows(name, values.get(name)) for name in self.names)

    def place(self, values: dict[str, Any], model: dict[str, Any], train: dict[str, Any]) -> None:
        """Put the drawn values of the extra fields into a trial's model and train config fields."""
        for p in self.extra:
            if p.name in values:
                p.place(values[p.name], model, train)

    def values_in(self, model: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
        """The value of each extra field that a run's configs train (drawn, or what an unsearched run trains: a
        reference preset shows it in the tables)."""
        return {p.name: p.value_in(model, train) for p in self.extra}

    def describe(self) -> str:
        """A table of the ranges, for the terminal and summary.md."""
        rows = []
        for name in PARAMS:
            lo, hi = getattr(self, name)
            if name in POW2:
                values = ", ".join(str(2**e) for e in range(int(math.log2(lo)), int(math.log2(hi)) + 1))
                how = "powers of two"
            elif name == "n_embed":
                values, how = ", ".join(str(v) for v in range(int(lo), int(hi) + 1, 64)), "multiples of 64"
            elif name == "learning_rate":
                values, how = f"{lo:g} .. {hi:g}", "log-uniform"
            else:
                values, how = f"{int(lo)} .. {int(hi)}", "integers"
            rows.append(f"| {name} | {values} | {how} |")
        rows += ["| {} | {} | {} |".format(p.name, *p.describe()) for p in self.extra]
        return "| parameter | values | drawn as |\n| --- | --- | --- |\n" + "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the six ranges, then each extra field in the space file's form (a study without extra
        fields records exactly what it did before they existed: its fingerprint is unchanged)."""
        out: dict[str, Any] = {k: list(getattr(self, k)) for k in PARAMS}
        out.update({p.name: p.to_json() for p in self.extra})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Space:
        """A study's recorded space (to_dict) read back for its report, without checking it against any config."""
        six = {k: tuple(v) for k, v in data.items() if k in PARAMS}
        extra = tuple(parse_param(k, v, "recorded space", None) for k, v in data.items() if k not in PARAMS)
        return cls(**six, extra=extra)


def _is_pow2(v: float) -> bool:
    return v == int(v) and int(v) > 0 and (int(v) & (int(v) - 1)) == 0


SPACES: dict[str, Space] = {
    # A CPU or a small GPU: trials of tens of seconds reach a few hundred steps.
    "small": Space(),
    # A consumer GPU (8-24 GB).
    "medium": Space(batch_size=(8, 128), block_size=(32, 256), n_embed=(64, 512), n_head=(1, 8), n_layer=(1, 8),
                    learning_rate=(1e-4, 3e-3)),
    # A data-centre GPU (40-80+ GB): reaches the out-of-memory frontier at the top of the ranges.
    "large": Space(batch_size=(16, 512), block_size=(64, 1024), n_embed=(128, 1024), n_head=(2, 16),
                   n_layer=(2, 16), learning_rate=(5e-5, 2e-3)),
}


def auto_space(device_type: str, memory_bytes: int | None) -> str:
    """Name of the space that fits the device: CPU -> small, < 16 GiB -> medium, else large."""
    if device_type != "cuda" or not memory_bytes:
        return "small"
    return "medium" if memory_bytes < 16 * GiB else "large"


def load_space(spec: str, device_type: str, memory_bytes: int | None, overrides: dict[str, Any],
               params: Mapping[str, Any] | None = None, extra_fields: Mapping[str, Any] | None = None) -> Space:
    """small | medium | large | auto | FILE.json (ranges over a named space), then the six's flag overrides, then
    the --param entries. `extra_fields`: a user model's declared fields and their defaults (searchable too)."""
    known = searchable(extra_fields)
    if spec == "auto":
        spec = auto_space(device_type, memory_bytes)
    if spec in SPACES:
        space = SPACES[spec]
    else:
        ranges = _read_space_file(Path(spec))
        base = ranges.pop("base", "auto")
        # The base is a named space, never another file: a file naming itself (or a cycle) would never end.
        if base != "auto" and (not isinstance(base, str) or base not in SPACES):
            raise UserError(f"--space {spec}: base must be one of {', '.join(SPACES)} or auto, got {base!r}")
        space = _with_ranges(load_space(base, device_type, memory_bytes, {}), ranges, f"--space {spec}", known)
    space = _with_ranges(space, overrides, None, None)
    for name, value in (params or {}).items():
        shown = name[:60] if isinstance(name, str) and name.isidentifier() else repr(name)[:60]  # one line
        space = _with_ranges(space, {name: value}, f"--param {shown}", known)
    return space


def _read_space_file(path: Path) -> dict[str, Any]:
    return read_json_object(path, "a JSON object of ranges", flag="--space",
                            missing="not small, medium, large, auto, or an existing JSON file")


def _with_ranges(space: Space, ranges: dict[str, Any], where: str | None,
                 known: Mapping[str, Field] | None) -> Space:
    """`space` with some ranges replaced; a bad one is named by its file or flag (`where`) or else by its own flag
    (the six's --batch-size style flags). `known`: the fields besides the six that may be searched (None: only
    the six)."""
    for name, value in ranges.items():
        label = where or f"--{name.replace('_', '-')}"
        if name not in PARAMS:
            if known is None:
                raise UserError(f"{label}: unknown parameter {name!r}; expected {', '.join(PARAMS)} (other fields: "
                                f"--param NAME=SPEC)")
            param = parse_param(name, value, label, known)
            space = replace(space, extra=(*(p for p in space.extra if p.name != name), param))
            continue
        # A single number pins a parameter; a pair is a range.
        pair = value if isinstance(value, (list, tuple)) else [value, value]
        try:
            space = replace(space, **{name: tuple(pair)})
        except UserError as exc:
            raise UserError(f"{label}: {exc}") from None
    return space


def parse_param_flag(text: str) -> list[tuple[str, Any]]:
    """--param NAME=SPEC (several: separated by ';') -> [(name, the space file's form)], for the flag. SPEC:
    LOW,HIGH (a range of the field's type), with ',log', ',step=N', ',int' or ',float' to say more; A|B|C (a
    choice); one value (pinned); or the space file's JSON form ({"float": [0, 0.3]})."""
    out = []
    for entry in (e.strip() for e in text.split(";") if e.strip()):
        name, eq, spec = entry.partition("=")
        if not eq or not name.strip() or not spec.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=SPEC (e.g. dropout=0,0.3), got {entry!r}")
        out.append((name.strip(), _spec_of_text(spec.strip())))
    if not out:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC (e.g. dropout=0,0.3), got {text!r}")
    return out


parse_param_flag.__name__ = "search entry (NAME=SPEC)"


def _spec_of_text(text: str) -> Any:
    """A --param SPEC in the space file's form (tune.core.fields' format)."""
    if text[0] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None
    if "|" in text:
        return {"choice": [_scalar(v.strip()) for v in text.split("|")]}
    parts = [p.strip() for p in text.split(",")]
    words = {p for p in parts if p in ("log", "int", "float")}
    steps = [p for p in parts if p.startswith("step=")]
    values = [_scalar(p) for p in parts if p not in words and p not in steps]
    if not words and not steps:
        return values[0] if len(values) == 1 else values
    kind = "float" if "float" in words else "int" if "int" in words or steps else (
        "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "float")
    out: dict[str, Any] = {kind: values, **({"log": True} if "log" in words else {})}
    if steps:
        out["step"] = _scalar(steps[-1].removeprefix("step="))
    return out


def _scalar(text: str) -> Any:
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, 'gelu' -> 'gelu'."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text


def parse_range(text: str) -> tuple[float, float]:
    """'8,64' -> (8, 64); '32' -> (32, 32); '1e-4,3e-3' -> (0.0001, 0.003). For the --batch-size style flags."""
    try:
        parts = [finite_float(p) for p in text.split(",")]
    except argparse.ArgumentTypeError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or one number, got {text!r}")
    low, high = (int(p) if p.is_integer() else p for p in parts)  # 8 reads as 8 in messages, not 8.0
    return low, high


parse_range.__name__ = "range (LOW,HIGH or one value)"


def preset_params(preset: str) -> dict[str, Any]:
    """The six searched values of a preset (for the tables)."""
    cfg = to_dict(*from_name(preset))
    values = {**cfg["model"], **cfg["train"]}
    return {k: values[k] for k in PARAMS}
