"""What every command-line entry point shares: one-line errors, exit codes, config flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, NoReturn

from gptcore.config import ACTIVATIONS, DTYPES, LR_DECAYS, NORMS, ModelConfig, TrainConfig
from gptcore.errors import UserError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
CHOICES = {"norm": NORMS, "activation": ACTIVATIONS, "dtype": DTYPES, "lr_decay": LR_DECAYS}
ALIASES = {"learning_rate": ["--lr"]}
HELP = {
    "vocab_size": "vocabulary size (0: take it from the corpus)",
    "max_iters": "training steps budget ('none' for no step limit)",
    "max_seconds": "training seconds budget, evaluation excluded ('none' for no time limit)",
    "grad_clip": "clip the gradient norm to this (0 disables)",
    "device": "auto, cpu, cuda, cuda:N or mps",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "") -> NoReturn:
    """Call main(argv); UserError -> one line + exit 2, Ctrl-C -> exit 130."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code or 0)


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return kind(text)

    parse.__name__ = f"{kind.__name__} or none"
    return parse


def _pair(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(text)
    return parts[0], parts[1]


_pair.__name__ = "two comma-separated numbers"
_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "str": str, "int | None": _optional(int), "float | None": _optional(float),
    "tuple[float, float]": _pair,
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ModelConfig/TrainConfig field (--n-layer, --learning-rate/--lr, --bias/--no-bias, ...)."""
    for cls in (ModelConfig, TrainConfig):
        group = parser.add_argument_group(f"{cls.__name__} fields (override the preset and --config)")
        for f in fields(cls):
            flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
            default = f.default if f.default is not MISSING else None
            help_text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default {default})"
            if f.type == "bool":
                group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(*flags, dest=f.name, type=_TYPES[f.type], choices=CHOICES.get(f.name),
                                   default=argparse.SUPPRESS, help=help_text, metavar=None if f.name in CHOICES
                                   else f.name.upper())


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    names = {f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
