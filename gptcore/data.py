"""Prepared data: memory-mapped train.bin / val.bin and random (x, y) windows from them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from gptcore.errors import UserError
from gptcore.prepare import META_FORMAT, prepare
from gptcore.tokenizer import CharTokenizer

SPLITS = ("train", "val")


def cache_root() -> Path:
    """Where on-the-fly preparations of plain text files go ($GPTCORE_CACHE, else ~/.cache/gptcore)."""
    env = os.environ.get("GPTCORE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptcore"


def ensure_prepared(path: str | Path, *, progress: bool = False) -> Path:
    """A prepared-data folder for `path`: the folder itself, or a cached preparation of a text/.xz file."""
    path = Path(path)
    if path.is_dir() and (path / "meta.json").exists():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (expected a .txt file or a prepared-data folder)")
    if path.is_dir():
        raise UserError(f"{path}: not a prepared-data folder (no meta.json); run `python -m gptcore prepare` on it")
    # Key the cache on the file's identity and version, so an edited corpus is prepared again.
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_root() / f"{path.stem}-{key}"
    if not (out / "meta.json").exists():
        prepare(path, out, progress=progress)
    return out


class TokenData:
    """Train and val token ids, each from its own file, read through np.memmap."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{meta_path}: not found; is {self.folder} a prepared-data folder?") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{meta_path}: unreadable ({exc})") from None
        if self.meta.get("format") != META_FORMAT or self.meta.get("dtype") not in ("uint8", "uint16"):
            raise UserError(f"{meta_path}: unknown format; prepare the corpus again")
        self.tokenizer = CharTokenizer(self.meta["tokenizer"]["chars"])
        self.dtype = np.dtype(self.meta["dtype"])
        self._arrays: dict[str, np.memmap] = {}
        for split in SPLITS:
            file = self.folder / f"{split}.bin"
            expected = self.meta[f"{split}_tokens"] * self.dtype.itemsize
            if not file.exists():
                raise UserError(f"{file}: missing")
            if file.stat().st_size != expected:
                raise UserError(f"{file}: {file.stat().st_size} bytes, meta.json says {expected}; prepare again")
            self._arrays[split] = np.memmap(file, dtype=self.dtype, mode="r")

    @classmethod
    def open(cls, path: str | Path, *, progress: bool = False) -> TokenData:
        """Open a prepared folder, preparing a plain .txt/.xz file into the cache first."""
        return cls(ensure_prepared(path, progress=progress))

    @property
    def vocab_size(self) -> int:
        """Size of the character vocabulary."""
        return self.tokenizer.vocab_size

    def tokens(self, split: str) -> np.memmap:
        """The memory-mapped token ids of one split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self._arrays[split]

    def fingerprint(self) -> str:
        """A short hash of what the corpus is (sources, sizes, counts, vocabulary); cheap on any size."""
        keys = ("tokenizer", "train_tokens", "val_tokens", "sources", "split_by", "val_fraction")
        blob = json.dumps({k: self.meta.get(k) for k in keys}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold more than one block plus its target."""
        for split in SPLITS:
            n = len(self._arrays[split])
            if n <= block_size + 1:
                raise UserError(
                    f"{self.folder}: {split} split has {n} tokens, fewer than block_size + 2 = {block_size + 2}"
                )

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x (B, T) and y (B, T) = x shifted by one, from `split`'s own file."""
        data = self.tokens(split)
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator).numpy()
        # One fancy-indexing read of all windows: (B, T+1), no Python loop, no decode.
        windows = data[ix[:, None] + np.arange(block_size + 1)]
        w = torch.from_numpy(windows.astype(np.int64))
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        device = torch.device(device)
        if device.type == "cuda":
            # Pinned host memory lets the copy overlap with compute.
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            x, y = x.to(device), y.to(device)
        return x, y
