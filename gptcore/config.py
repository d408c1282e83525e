"""The one place hyperparameters live: frozen, self-validating dataclasses and named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gptcore.errors import UserError
from gptcore.files import read_json_object

NORMS = ("post", "pre")
ACTIVATIONS = ("relu", "gelu")
DTYPES = ("float32", "bfloat16", "float16")
LR_DECAYS = ("none", "cosine", "wsd")
# none: eager; default: torch.compile; graphs: torch.compile's CUDA-graph mode (reduce-overhead, CUDA only);
# auto: whichever is expected to pay for its compile time (gptcore.compiling.choose).
COMPILE_MODES = ("none", "default", "graphs", "auto")


SEED_MAX = 2**32 - 1  # NumPy and Optuna take 32-bit seeds (torch takes more): one range for every seed
INT_MAX = 2**63 - 1  # what a torch int64 holds: larger "integers" would overflow deep inside torch


def _field(default: Any, help_text: str) -> Any:
    """A config field with its command-line help (cliutil.add_config_flags makes the flag from it)."""
    return field(default=default, metadata={"help": help_text})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _is_int(value) or not 0 < value <= INT_MAX:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _numbers_are_finite(obj: object) -> None:
    """Every float field (a pair of floats included) must hold finite numbers: NaN and inf are refused here."""
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if "float" not in f.type or (value is None and "None" in f.type):
            continue
        items = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
            what = "finite numbers" if isinstance(value, tuple) else "a finite number"
            raise ValueError(f"{f.name} must be {what}, got {value!r}")


def _choice(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def split_model_spec(spec: object) -> tuple[str, str]:
    """A model spec "FILE.py:Class" or "package.module:Class" -> (file or module, class); ValueError otherwise."""
    form = "FILE.py:Class or package.module:Class"
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"model must be {form}, got {spec!r}")
    target, _, name = spec.rpartition(":")  # the last colon: a file's path may hold one
    if not name.isidentifier():
        raise ValueError(f"model {spec!r}: {name!r} after the last ':' is not a class name ({form})")
    if not target.endswith(".py") and not all(part.isidentifier() for part in target.split(".")):
        raise ValueError(f"model {spec!r}: {target!r} is neither a .py file nor a dotted module name ({form})")
    return target, name


def _check_extra(extra: object) -> None:
    """A user model's own field values: names that are not ModelConfig's, JSON scalar values."""
    if not isinstance(extra, dict):
        raise ValueError(f"extra must be an object of field values, got {extra!r}")
    own = {f.name for f in fields(ModelConfig)}
    for name, value in extra.items():
        if not isinstance(name, str) or not name.isidentifier() or name in own:
            raise ValueError(f"extra: {name!r} must be a Python name that is not a ModelConfig field")
        if not isinstance(value, (bool, int, float, str)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"extra: {name} must be a finite number, a string or true/false, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT. Defaults are the course's architecture (post-norm Add & Norm, ReLU)."""

    vocab_size: int = _field(0, "vocabulary size in characters (0: take it from the corpus)")  # set before building
    block_size: int = _field(64, "context length: tokens (characters) the model sees at once")
    n_embed: int = _field(128, "embedding width: numbers per token in the residual stream (divisible by --n-head)")
    n_head: int = _field(4, "attention heads per layer (--n-embed must divide by it)")
    n_layer: int = _field(4, "transformer blocks stacked")
    dropout: float = _field(0.2, "dropout probability in [0, 1) on attention weights and block outputs (0: none)")
    norm: str = _field("post", "LayerNorm placement: post, x = LN(x + f(x)) as in the course; pre, x = x + f(LN(x)) as "
                               "in GPT-2")
    bias: bool = _field(True, "bias terms in the Linear and LayerNorm layers (--no-bias: none)")
    activation: str = _field("relu", "feed-forward activation: relu (the course) or gelu (GPT-2)")
    # Your own model class (gptcore.usermodel, docs/your-model.md): no config flag of its own; each command that
    # builds models takes --model. "" is gptcore's GPT. hash=False: a dict is unhashable, equality still sees it.
    model: str = field(default="", metadata={"flag": False, "help": "your model class, FILE.py:Class or "
                                                                    "package.module:Class ('': gptcore's GPT)"})
    extra: dict[str, Any] = field(default_factory=dict, hash=False, metadata={
        "flag": False, "help": "values of the fields your model class declares (config_fields)"})

    def __post_init__(self) -> None:
        _positive_int(self, "block_size", "n_embed", "n_head", "n_layer")
        if not _is_int(self.vocab_size) or not 0 <= self.vocab_size <= INT_MAX:
            raise ValueError(f"vocab_size must be a non-negative integer, got {self.vocab_size!r}")
        if self.n_embed % self.n_head != 0:
            raise ValueError(
                f"n_embed must be divisible by n_head, got n_embed={self.n_embed}, n_head={self.n_head}"
            )
        _numbers_are_finite(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _choice(self, "norm", NORMS)
        _choice(self, "activation", ACTIVATIONS)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        if self.model != "":
            split_model_spec(self.model)  # its form only: the class is loaded where a model is built
        _check_extra(self.extra)

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.n_embed // self.n_head

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """Copy with the vocabulary size of a corpus filled in."""
        return dataclasses.replace(self, vocab_size=vocab_size)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, evaluation, budget, precision and device."""

    batch_size: int = _field(12, "sequences per micro-batch")
    learning_rate: float = _field(1e-3, "AdamW peak learning rate")
    weight_decay: float = _field(0.1, "AdamW weight decay on the weight matrices (0 disables)")
    betas: tuple[float, float] = _field((0.9, 0.99), "AdamW's beta1,beta2: two numbers in [0, 1), e.g. 0.9,0.95")
    grad_clip: float = _field(1.0, "clip the gradient norm to this (0: no clipping)")
    grad_accum_steps: int = _field(1, "micro-batches per optimizer step (sequences per step: --batch-size x this)")
    warmup_iters: int = _field(0, "optimizer steps of linear learning-rate warm-up from 0 (0: none)")
    # "cosine" decays to lr/10 over the budget (steps or seconds, whichever ends first); "wsd" (warm-up, stable,
    # decay) holds the rate and decays linearly to lr/10 over the budget's last 20 %.
    lr_decay: str = _field("none", "learning-rate schedule over the budget: none (constant), cosine (to lr/10), wsd "
                                   "(constant, then linear to lr/10 over the last 20 %)")
    eval_interval: int = _field(250, "evaluate every this many optimizer steps")
    eval_iters: int = _field(20, "batches averaged per loss estimate at each evaluation")
    # The tuner fixes eval_batch_size so every trial sees the same validation set.
    eval_batch_size: int | None = _field(None, "sequences per evaluation batch ('none': --batch-size)")
    eval_train_split: bool = _field(True, "also estimate the loss on the train split (--no-eval-train-split: the mean "
                                          "training loss since the last evaluation, half the cost)")
    max_iters: int | None = _field(2000, "training budget in optimizer steps ('none': no step limit)")
    max_seconds: float | None = _field(None, "training budget in seconds, evaluation excluded ('none': no time "
                                             "limit); with --max-iters too, whichever ends first")
    dtype: str = _field("float32", "precision: float32, or bfloat16 / float16 mixed precision (float16: GPU only)")
    compile: str = _field("auto", "none (eager), default (torch.compile), graphs (torch.compile with CUDA graphs, "
                                  "CUDA only) or auto (compile only when the run is long enough to pay back the "
                                  "compile time); true/false in old configs mean default/none")
    seed: int = _field(1337, "random seed of the weights, dropout and batch positions (0 to 4294967295)")
    device: str = _field("auto", "auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # configs written before compile was a choice
            object.__setattr__(self, "compile", "default" if self.compile else "none")
        # JSON gives lists; keep the frozen config hashable and comparable.
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        _positive_int(self, "batch_size", "grad_accum_steps", "eval_interval", "eval_iters")
        if self.eval_batch_size is not None:
            _positive_int(self, "eval_batch_size")
        _numbers_are_finite(self)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip!r}")
        if not _is_int(self.warmup_iters) or not 0 <= self.warmup_iters <= INT_MAX:
            raise ValueError(f"warmup_iters must be a non-negative integer, got {self.warmup_iters!r}")
        _choice(self, "lr_decay", LR_DECAYS)
        if self.max_iters is None and self.max_seconds is None:
            raise ValueError("set a budget: max_iters and/or max_seconds (both are None)")
        if self.max_iters is not None:
            _positive_int(self, "max_iters")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be a positive number, got {self.max_seconds!r}")
        _choice(self, "dtype", DTYPES)
        if not isinstance(self.eval_train_split, bool):
            raise ValueError(f"eval_train_split must be true or false, got {self.eval_train_split!r}")
        _choice(self, "compile", COMPILE_MODES)
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an integer from 0 to {SEED_MAX}, got {self.seed!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a string such as auto, cpu, cuda, cuda:1 or mps, got {self.device!r}")

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimiser step (batch_size x grad_accum_steps)."""
        return self.batch_size * self.grad_accum_steps


MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))

# Named presets, litgpt style: a plain dict of overrides on the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # For tests: trains in well under a second on a CPU.
    "tiny": dict(block_size=16, n_embed=32, n_head=2, n_layer=2, dropout=0.0, batch_size=4,
                 max_iters=50, eval_interval=25, eval_iters=4),
    # nanoGPT's "baby GPT" for a laptop CPU (shakespeare_char, 2000 iterations, dropout 0).
    "baby": dict(block_size=64, n_embed=128, n_head=4, n_layer=4, dropout=0.0, batch_size=12,
                 learning_rate=1e-3, max_iters=2000, eval_interval=250, eval_iters=20),
    # The course's command-line defaults, small enough for any CPU.
    "course-default": dict(block_size=32, n_embed=128, n_head=8, n_layer=1, dropout=0.2, batch_size=8,
                           learning_rate=3e-4, max_iters=1000, eval_interval=250, eval_iters=50),
    # The course's final GPT (gpt-v1): 384 wide, 4 heads, 4 layers, block 128, batch 32.
    "course": dict(block_size=128, n_embed=384, n_head=4, n_layer=4, dropout=0.2, batch_size=32,
                   learning_rate=3e-4, max_iters=3000, eval_interval=500, eval_iters=100),
    # A GPU-sized character model (nanoGPT shakespeare_char scale).
    "gpu": dict(block_size=256, n_embed=384, n_head=6, n_layer=6, dropout=0.2, batch_size=64,
                learning_rate=1e-3, max_iters=5000, eval_interval=250, eval_iters=200, warmup_iters=100,
                lr_decay="cosine", dtype="bfloat16"),
}


def split_fields(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat dict into model and train fields; unknown keys are a ValueError."""
    unknown = sorted(set(values) - MODEL_FIELDS - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    model = {k: v for k, v in values.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
    return model, train


def from_name(name: str, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """Build (model, train) configs from a named preset plus flat overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    model, train = split_fields({**PRESETS[name], **overrides})
    return ModelConfig(**model), TrainConfig(**train)


def to_dict(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The JSON form: {"model": {...}, "train": {...}}."""
    return {"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}


def from_dict(data: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Inverse of `to_dict`; also accepts one flat dict of fields.

    A nested config may carry a "provenance" object (the tuner's best.json says where the configuration came
    from and how it was judged): it is for people and is ignored here.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("provenance", {}), dict):
        raise ValueError("config field 'provenance' must be an object")
    if _is_nested(data):
        model, train = data.get("model", {}), data.get("train", {})
        for key, part in (("model", model), ("train", train)):
            if not isinstance(part, dict):
                raise ValueError(f"config field {key!r} must be an object")
        split_fields({**model, **train})  # names unknown keys
        bad_model = sorted(set(model) - MODEL_FIELDS)
        bad_train = sorted(set(train) - TRAIN_FIELDS)
        if bad_model or bad_train:
            raise ValueError(f"misplaced config field(s): {', '.join(bad_model + bad_train)}")
    else:
        model, train = split_fields(data)
    return ModelConfig(**model), TrainConfig(**train)


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file into a flat dict of fields; errors name the file."""
    path = Path(path)
    try:
        data = read_json_object(path, "a JSON config", missing="config file not found")
    except UserError as exc:
        raise ValueError(str(exc)) from None
    try:
        from_dict(data)  # validate now, so the error names this file
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    # Return only the keys the file set, so CLI flags and presets can still fill the rest.
    if _is_nested(data):
        return {**data.get("model", {}), **data.get("train", {})}
    return dict(data)


def _is_nested(data: dict[str, Any]) -> bool:
    # A flat config may hold only ModelConfig's "model" field (a spec string): nested means "model" is an object.
    return (bool(data) and set(data) <= {"model", "train", "provenance"}
            and not isinstance(data.get("model"), str))
