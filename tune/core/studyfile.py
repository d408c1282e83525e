"""A study file: `python -m tune --config study.toml` holds any of the tuner's flags, and the command line overrides it.

    # study.toml: each key is a flag's long name without its dashes, its value what you would type after the flag
    trials = 30
    budget = "10m"
    references = ["baby", "gpu"]      # a list: the flag's comma-separated values (or "baby,gpu")
    n-layer = [2, 8]                  # a search range, LOW,HIGH (one number pins it)
    no-save-models = true             # a flag without a value: true or false

The keys are spelled as the flags are, with dashes (`reduction-factor`, not `reduction_factor`): one spelling, the one
in --help. Every value goes through the flag's own parser, so it obeys the same rules and a bad one is refused in
the same words, naming the file and the key. Paths are relative to the folder the tuner runs in, as the flag's are
(--space, --warm-start and --storage may be names or paths: only the command line's meaning is unambiguous).
The file's text is recorded with each tuner start in the study (tune.core.provenance), so the study holds what ran.
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcore.errors import UserError
from gptcore.files import _read_bounded  # the one bounded reader of the user's files (gptcore.files' JSON rules)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (a dependency there only)
    import tomli as tomllib

FLAG = "--config"
EXPECTED = "a TOML file of the tuner's flags"
class _Unset(list):
    """A namespace value argparse leaves alone when the command line does not set the flag. A list, because an
    append flag (--param) copies the list it finds before appending: the copy is no longer this object."""


_UNSET = _Unset()
MAX_BYTES = 2**20  # a study file is a few hundred bytes; a device or a log given by mistake is refused, not read


@dataclass(frozen=True)
class StudyFile:
    """A study file as it was read: its path as given and its text (what the study records)."""

    path: str
    text: str


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args(argv), with the flags of the --config file (if any) under the command line's; the file read
    once, kept as args.study_file (None without --config)."""
    args = parser.parse_args(argv)  # the command line checked first; it names the file
    if getattr(args, "config", None) is None:
        args.study_file = None
        return args
    study, table = read(args.config)
    values = flag_values(parser, table, study.path)
    # Parsed into a namespace holding the file's values: argparse sets only the flags given on the command line
    # over them, and the defaults only where neither says anything.
    args = parser.parse_args(argv, namespace=argparse.Namespace(**values))
    args.study_file = study
    # The file's flags the command line left alone: a later check that refuses one of their values names the file.
    unset = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(values, _UNSET)))
    flags = {action.dest: f"--{key}" for key, action in _keys(parser).items()}
    args.flags_from_file = tuple(flags[dest] for dest in values if getattr(unset, dest) is _UNSET)
    return args


def blame(exc: UserError, args: argparse.Namespace) -> UserError:
    """`exc` naming the study file too when its line starts with a flag whose value came from the file."""
    study, text = getattr(args, "study_file", None), str(exc)
    for flag in getattr(args, "flags_from_file", ()):
        if text == flag or text.startswith((f"{flag} ", f"{flag}:", f"{flag}=")):
            return UserError(f"{FLAG} {study.path}: {flag[2:]}: {text}")
    return exc


def read(path: str | Path) -> tuple[StudyFile, dict[str, Any]]:
    """The study file as read, and its TOML table; a one-line UserError naming the file otherwise."""
    where = f"{FLAG} {path}"
    raw = _read_bounded(Path(path), where, EXPECTED, None, MAX_BYTES)
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows Notepad writes one) is no TOML error
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text (at byte {exc.start}); expected {EXPECTED}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # gptcore train's --config takes a model's JSON config (best.json): a likely mix-up, named.
        hint = " (a model's JSON config, such as best.json, is for `python -m gptcore train --config`)" \
            if Path(path).suffix.lower() == ".json" else ""
        raise UserError(f"{where}: not valid TOML ({exc}){hint}; expected {EXPECTED}") from None
    return StudyFile(str(path), text), table


def _keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each flag a study file may hold, by its long name without dashes (not --help, not --config itself)."""
    keys = {}
    for action in parser._actions:  # argparse keeps its actions private; this list is stable since Python 2.7
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and not isinstance(action, argparse._HelpAction) and FLAG not in longs:
            keys[longs[0][2:]] = action
    return keys


def flag_values(parser: argparse.ArgumentParser, table: dict[str, Any], path: str) -> dict[str, Any]:
    """{dest: value} of a study file's table, each value parsed by its flag; UserError `file: key: ...` otherwise."""
    keys = _keys(parser)
    values = {}
    for key, value in table.items():
        if key == FLAG[2:]:
            raise UserError(f"{FLAG} {path}: {key}: a study file cannot name another; expected the flags themselves")
        if key not in keys:
            raise UserError(f"{FLAG} {path}: {key}: not a flag of the tuner{_suggestion(key, keys)}; expected a "
                            f"flag's long name without its dashes (see --help)")
        action = keys[key]
        values[action.dest] = _value(parser, action, value, f"{FLAG} {path}: {key}")
    return values


def _suggestion(key: str, keys: dict[str, argparse.Action]) -> str:
    """' (did you mean reduction-factor?)' for a near miss (reduction_factor, trails), else ''."""
    close = difflib.get_close_matches(key.replace("_", "-"), list(keys), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    """One flag's value from TOML: true/false for a flag without a value; else the text one would type, parsed."""
    if action.nargs == 0:  # --no-save-models, --quiet, ...: present or not
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {_shown(value)}")
        return action.const if value else action.default
    if action.type is None and not isinstance(value, str):  # --device, --space, --storage: free text
        raise UserError(f"{where}: expected a string, got {_shown(value)}")
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, str | int | float) for v in items):
        raise UserError(f"{where}: expected a string, a number or a list of them (the flag's value), got "
                        f"{_shown(value)}")
    text = ",".join(str(v) for v in items)
    try:
        # The flag's own conversion and choices, as on the command line (argparse keeps them private too).
        return parser._get_values(action, [text])
    except argparse.ArgumentError as exc:
        raise UserError(f"{where}: {exc.message}") from None


def _shown(value: Any) -> str:
    """A TOML value as the file spells it, for messages: true, 2.5, "x", [1, 2], a table."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return json.dumps(value)  # TOML's basic string: "x"
    return str(value)
