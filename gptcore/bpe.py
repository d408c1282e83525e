"""Byte-level BPE tokenizer: a wrapper around the `tokenizers` library with the interface of gptcore.tokenizer.

Byte-level: every text encodes (256 byte symbols are the base alphabet), so nothing is ever unknown.
"<|endoftext|>" is reserved as a special token when the tokenizer is trained, so eos_id is set from the start;
text that happens to contain that string encodes as ordinary bytes, never as EOS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,)
BYTE_ALPHABET = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS)  # below this the bytes themselves do not fit


class BPETokenizer:
    """A trained byte-level BPE (tokenizers.Tokenizer) with EOS reserved."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"a BPE tokenizer needs the special token {EOS_TOKEN!r}")
        self.tokenizer = tokenizer
        # Special tokens in the text to encode are plain text: only the model (or fine-tuning) emits EOS.
        self.tokenizer.encode_special_tokens = True
        self._eos_id = eos

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, length: int | None = None) -> BPETokenizer:
        """Train on an iterator of text chunks (streamed: the library never needs the whole corpus at once)."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + {EOS_TOKEN}), "
                             f"got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        )
        tok.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """The id of "<|endoftext|>"."""
        return self._eos_id

    def with_eos(self) -> BPETokenizer:
        """Itself: a BPE tokenizer has its EOS token from training on."""
        return self

    def unknown(self, text: str) -> list[str]:
        """Nothing: every text has bytes, and every byte has a token."""
        return []

    def encode(self, text: str, *, drop_unknown: bool = False) -> list[int]:
        """Text -> ids (never EOS); `drop_unknown` has nothing to drop."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_chunks(self, texts: Iterable[str]) -> Iterator[list[int]]:
        """Ids of each text in turn, encoded in batches (the library's fast path)."""
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == 8:  # a few 1 MiB chunks at a time: memory stays flat
                yield from (e.ids for e in self.tokenizer.encode_batch(batch, add_special_tokens=False))
                batch = []
        if batch:
            yield from (e.ids for e in self.tokenizer.encode_batch(batch, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; EOS prints as nothing."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def stoi(self) -> dict[str, int]:
        """Each single token's text -> its id (for callers that look up one character, e.g. "\\n")."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=False)
        return {self.tokenizer.decode([i]): i for i in sorted(vocab.values(), reverse=True)}

    def to_json(self) -> str:
        """The library's own JSON (what tokenizer.json holds)."""
        return self.tokenizer.to_str()

    def to_dict(self) -> dict[str, Any]:
        """The stored form: {"type": "bpe", "tokenizer": <the library's JSON object>}."""
        return {"type": "bpe", "tokenizer": json.loads(self.to_json())}

    def sha256(self) -> str:
        """sha256 of the library JSON, as written to tokenizer.json."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """From the library's JSON (a tokenizer.json file's content); ValueError if it is not one."""
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # the library raises plain Exception for a malformed file
            raise ValueError(f"not a tokenizers JSON ({str(exc)[:200]})") from None
        if not isinstance(tok.model, models.BPE):
            raise ValueError(f"expected a BPE model, got {type(tok.model).__name__}")
        return cls(tok)

    @classmethod
    def from_dict(cls, data: object) -> BPETokenizer:
        """Inverse of to_dict."""
        if not isinstance(data, dict) or data.get("type") != "bpe" or not isinstance(data.get("tokenizer"), dict):
            raise ValueError('not a BPE tokenizer ({"type": "bpe", "tokenizer": {...}})')
        return cls.from_json(json.dumps(data["tokenizer"]))

    def save(self, path: str | Path) -> None:
        """Write to_dict() as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
