"""Tokenizers: the character tokenizer (one id per distinct character) and the interface every tokenizer has.

Every tokenizer (CharTokenizer here, BPETokenizer in gptcore.bpe) offers: vocab_size, encode(text,
drop_unknown=), decode(ids) (never outputs the EOS token's text), unknown(text), eos_id (None: no EOS yet),
with_eos() (a copy with an EOS token; for the char tokenizer it is the LAST id, so every existing id keeps its
meaning), to_dict() / tokenizer_from_dict(data) (dispatch on data["type"]: "char" or "bpe"), save(path) /
load_tokenizer(path). A stored char vocabulary {"type": "char", "chars": [...]} without an "eos" key (every one
saved before EOS existed) loads unchanged, with eos_id None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gptcore.errors import UserError
from gptcore.files import read_json_object


class Tokenizer(Protocol):
    """What every tokenizer offers (see the module docstring)."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, EOS included."""

    @property
    def eos_id(self) -> int | None:
        """The EOS token's id, or None when there is none."""

    def encode(self, text: str, *, drop_unknown: bool = False) -> list[int]:
        """Text -> ids (never EOS)."""

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, without EOS's text."""

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` it cannot encode."""

    def with_eos(self) -> Tokenizer:
        """A copy that has an EOS token."""

    def to_dict(self) -> dict[str, Any]:
        """The stored form, for tokenizer_from_dict."""

    def save(self, path: str | Path) -> None:
        """Write to_dict() as JSON to `path`."""


class CharTokenizer:
    """Maps characters to ids and back. The corpus's characters come first, sorted (deterministic); after them, in
    the order they were added, the EOS token and any characters added later (finetune --extend-vocab): an id, once
    given, never changes meaning."""

    def __init__(self, chars: Iterable[str], *, eos: bool = False, tail: Iterable[str | None] = ()) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("every vocabulary entry must be exactly one character")
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("a tokenizer needs at least one character")
        # After the sorted characters, in id order: added characters, and None for the EOS token.
        tail = list(tail)
        self.tail: list[str | None] = [*tail, *([None] if eos and None not in tail else [])]
        extra = [c for c in self.tail if c is not None]
        if any(not isinstance(c, str) or len(c) != 1 for c in extra) or self.tail.count(None) > 1 \
                or len(set(extra)) != len(extra) or set(extra) & set(self.chars):
            raise ValueError("added entries must be new, distinct single characters, with at most one EOS")
        self.stoi = {c: i for i, c in enumerate([*self.chars, *self.tail]) if c is not None}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = the distinct characters of `text`."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        """Number of ids: the characters, plus EOS when it has one."""
        return len(self.chars) + len(self.tail)

    @property
    def eos_id(self) -> int | None:
        """The EOS token's id, or None when this vocabulary has no EOS."""
        return len(self.chars) + self.tail.index(None) if None in self.tail else None

    def with_eos(self) -> CharTokenizer:
        """A copy with an EOS token appended as the last id (itself again if it already has one)."""
        return self if self.eos_id is not None else CharTokenizer(self.chars, tail=[*self.tail, None])

    def with_chars(self, chars: Iterable[str]) -> CharTokenizer:
        """A copy with `chars` (those it lacks) appended after the last id: every existing id keeps its meaning."""
        new = [c for c in dict.fromkeys(chars) if c not in self.stoi]
        return CharTokenizer(self.chars, tail=[*self.tail, *new])

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str, *, drop_unknown: bool = False) -> list[int]:
        """Text -> ids (never EOS). Unknown characters raise UserError listing them, or are dropped if asked."""
        missing = self.unknown(text)
        if missing and not drop_unknown:
            shown = ", ".join(repr(c) for c in missing[:20])
            raise UserError(f"text has {len(missing)} character(s) not in the vocabulary: {shown}")
        return [self.stoi[c] for c in text if c in self.stoi]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; the EOS token prints as nothing."""
        itos = [*self.chars, *self.tail]
        return "".join(c for c in (itos[i] for i in ids) if c is not None)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: {"type": "char", "chars": [...]}, plus "eos": true when EOS is the only addition (as
        saved before characters could be added), or "tail": [...] (null for EOS) when characters were added."""
        data: dict[str, Any] = {"type": "char", "chars": list(self.chars)}
        if self.tail == [None]:  # a vocabulary without additions is stored exactly as before they existed
            data["eos"] = True
        elif self.tail:
            data["tail"] = list(self.tail)
        return data

    def to_json(self) -> str:
        """The vocabulary as JSON (see to_dict)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: object) -> CharTokenizer:
        """The stored form {"type": "char", "chars": [...], "eos"?: bool}, exactly as saved: distinct, sorted."""
        if not isinstance(data, dict) or data.get("type") != "char" or not isinstance(data.get("chars"), list):
            raise ValueError("not a char tokenizer vocabulary")
        eos, tail = data.get("eos", False), data.get("tail", [])
        if not isinstance(eos, bool):
            raise ValueError(f"eos must be true or false, got {eos!r}")
        if not isinstance(tail, list) or (eos and tail):
            raise ValueError("tail must be a list of added characters (null: EOS), and not given with eos")
        tokenizer = cls(data["chars"], eos=eos, tail=tail)
        # Ids are positions in this list, so a reordered or repeated entry means the file was edited or damaged:
        # re-sorting it would hide that and silently change what every id means.
        if tokenizer.chars != data["chars"]:
            raise ValueError("the characters are not distinct and in sorted order as saved (edited or damaged?)")
        return tokenizer

    def save(self, path: str | Path) -> None:
        """Write the vocabulary JSON to `path`."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a char vocabulary JSON; errors name the file."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, CharTokenizer):
            raise UserError(f"{path}: not a valid vocabulary (a {tokenizer.to_dict()['type']} tokenizer, not char)")
        return tokenizer


def tokenizer_from_dict(data: object) -> Tokenizer:
    """A tokenizer from its stored dict, by data["type"] ("char" or "bpe"); ValueError if it is neither."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if kind == "bpe":
        from gptcore.bpe import BPETokenizer  # the tokenizers library is imported only for a BPE vocabulary

        return BPETokenizer.from_dict(data)
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a stored tokenizer (char or BPE) from a JSON file; errors name the file."""
    path = Path(path)
    data = read_json_object(path, "a vocabulary", missing="vocabulary file not found")
    try:
        return tokenizer_from_dict(data)
    except ValueError as exc:
        raise UserError(f"{path}: not a valid vocabulary ({exc})") from None
