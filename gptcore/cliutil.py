"""What every command-line entry point shares: one-line errors, exit codes, config flags."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn

from gptcore.config import ACTIVATIONS, COMPILE_MODES, DTYPES, LR_DECAYS, NORMS, SEED_MAX, ModelConfig, TrainConfig
from gptcore.errors import UserError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
CHOICES = {"norm": NORMS, "activation": ACTIVATIONS, "dtype": DTYPES, "lr_decay": LR_DECAYS, "compile": COMPILE_MODES}
ALIASES = {"learning_rate": ["--lr"]}
QUIET_HELP = "print only warnings, errors and the final result (where the results went); no progress bar"
PROGRESS_HELP = "no progress bar (a bar shows only when stderr is a terminal)"
_invoked_as: dict[str, str] = {}  # `python -m tune` -> the console command running now (gptcore-tune)


def prog(default: str) -> str:
    """The command as the user typed it: the console command (gptcore-tune) while one runs, else `default`."""
    return _invoked_as.get(default, default)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A bare type=int or type=float says "expected an integer, got 'x'" like every other flag, not argparse's
        # "invalid int value"; the registry is shared with this parser's argument groups.
        self.register("type", int, number(int, "an integer"))
        self.register("type", float, finite_float)

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "") -> NoReturn:
    """Call main(argv); UserError -> one line + exit 2, Ctrl-C or SIGTERM -> exit 130."""
    try:
        with sigterm_as_ctrl_c():
            code = main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code or 0)


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM takes Ctrl-C's path: whatever handles SIGINT now (KeyboardInterrupt, or train's stop-and-save)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signum, frame)
    else:  # SIG_DFL, a handler installed outside Python (None), or SIG_IGN inherited from `nohup` or a script's
        # `cmd &`: those ignore Ctrl-C on purpose, not a kill (which was ignored, and the tuner ran on)
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While active, SIGTERM (what kill, systemd, Slurm and Kubernetes send) is handled as Ctrl-C: a run stopped
    that way saves and records what Ctrl-C would, instead of dying with nothing saved."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def console(main: Callable[[list[str] | None], int | None], default: str) -> NoReturn:
    """A console command's entry point ([project.scripts]): run(main) with usage and errors naming the command
    the user typed (`gptcore-tune`), or `default` (`python -m tune`) when run as a module."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in ("", "-c", "__main__.py"):  # python -m PACKAGE puts the package's __main__.py in argv[0]
        name = default
    _invoked_as[default] = name
    try:
        run(main, prog=name)
    finally:
        del _invoked_as[default]


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet: only warnings, errors and the final result."""
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def with_article(noun: str) -> str:
    """'integer' -> 'an integer', 'number' -> 'a number': the article English wants before a type's name."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# --- flag types: every CLI's numbers, sizes and seeds are parsed here, so one rule (finite, in range) holds
# everywhere and every refusal reads `prog: error: argument --flag: expected ..., got 'text'`.


def number(kind: type, what: str, ok: Callable[[Any], bool] = lambda v: True) -> Callable[[str], Any]:
    """A flag type: text -> int or finite float for which ok(value) holds; else 'expected <what>, got ...'."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type by __name__ in its own messages
    return parse


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A flag type for an integer in [low, high]."""
    return number(int, f"an integer from {low} to {high}", lambda v: low <= v <= high)


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag type that also takes 'none' (-> None)."""

    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "") else parse(text)

    parse_optional.__name__ = f"{parse.__name__} or none"
    return parse_optional


finite_float = number(float, "a number")
positive_float = number(float, "a positive number", lambda v: v > 0)
non_negative_float = number(float, "a number >= 0", lambda v: v >= 0)
fraction = number(float, "a number between 0 and 1 (exclusive)", lambda v: 0 < v < 1)
positive_int = number(int, "a positive integer", lambda v: v > 0)
non_negative_int = number(int, "an integer >= 0", lambda v: v >= 0)
seed = int_range(0, SEED_MAX)


def float_pair(text: str) -> tuple[float, float]:
    """'0.9,0.99' -> (0.9, 0.99): two finite numbers."""
    try:
        a, b = (finite_float(p) for p in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):  # ValueError: not two parts
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}") from None
    return a, b


def index_list(text: str) -> tuple[int, ...]:
    """'0,2,3' or '0-3,6' (the kernel's cpu-list form) -> sorted distinct non-negative integers."""
    values: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise argparse.ArgumentTypeError(f"expected indices like 0,2,3 or 0-3, got {text!r}")
        low = int(m.group(1))
        values.update(range(low, int(m.group(2) or low) + 1))
    return tuple(sorted(values))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """A flag type for bytes: '8GiB' -> 8589934592, '600MB' -> 600000000, '1024' -> 1024."""
    m = _SIZE.match(text)
    value = float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()] if m else 0
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a size such as 8GiB or 600MB, got {text!r}")
    return int(value)


# Config fields: the flag refuses what is not a finite number; ranges are the config dataclasses' to check.
_TYPES: dict[str, Callable[[str], Any]] = {
    "int": number(int, with_article("integer")), "float": finite_float, "str": str,
    "int | None": optional(number(int, with_article("integer"))), "float | None": optional(finite_float),
    "tuple[float, float]": float_pair,
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ModelConfig/TrainConfig field (--n-layer, --learning-rate/--lr, --bias/--no-bias, ...), its
    help from the field's metadata (gptcore.config: the one place hyperparameters, and what they mean, live)."""
    for cls in (ModelConfig, TrainConfig):
        group = parser.add_argument_group(
            f"{cls.__name__} fields", "each overrides the preset and --config; the default shown is the field's own, "
                                      "which a preset may change")
        for f in fields(cls):
            if f.metadata.get("flag") is False:  # ModelConfig.model and .extra: set through --model, not a flag
                continue
            flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
            default = f.default if f.default is not MISSING else None
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default).lower()
            help_text = f"{f.metadata['help']} (default {shown})".replace("%", "%%")  # argparse formats help with %
            if f.type == "bool":
                group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(*flags, dest=f.name, type=_TYPES[f.type], choices=CHOICES.get(f.name),
                                   default=argparse.SUPPRESS, help=help_text, metavar=None if f.name in CHOICES
                                   else f.name.upper())


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    names = {f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls) if f.metadata.get("flag") is not False}
    return {k: v for k, v in vars(args).items() if k in names}
