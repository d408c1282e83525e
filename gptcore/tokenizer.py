"""Character tokenizer: one id per distinct character of the corpus, stored as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gptcore.errors import UserError


class CharTokenizer:
    """Maps characters to ids and back; the vocabulary is sorted so it is deterministic."""

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("every vocabulary entry must be exactly one character")
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("a tokenizer needs at least one character")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = the distinct characters of `text`."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str, *, drop_unknown: bool = False) -> list[int]:
        """Text -> ids. Unknown characters raise UserError listing them, or are dropped if asked."""
        missing = self.unknown(text)
        if missing and not drop_unknown:
            shown = ", ".join(repr(c) for c in missing[:20])
            raise UserError(f"text has {len(missing)} character(s) not in the vocabulary: {shown}")
        return [self.stoi[c] for c in text if c in self.stoi]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text."""
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        """The vocabulary as a JSON list of characters."""
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: object) -> CharTokenizer:
        """The stored form {"type": "char", "chars": [...]}, exactly as saved: distinct characters, sorted."""
        if not isinstance(data, dict) or data.get("type") != "char" or not isinstance(data.get("chars"), list):
            raise ValueError("not a char tokenizer vocabulary")
        tokenizer = cls(data["chars"])
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
        """Read a vocabulary JSON; errors name the file."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: vocabulary file not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{path}: not a valid vocabulary ({exc})") from None
