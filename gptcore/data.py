"""Prepared data (char or BPE token ids): memory-mapped train.bin / val.bin and random (x, y) windows from them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gptcore.errors import UserError
from gptcore.prepare import corpus_fingerprint, ensure_prepared, meta_tokenizer, read_meta

SPLITS = ("train", "val")
# On CUDA the corpus moves to the GPU when it takes at most this share of the free device memory: training needs
# the rest, and a corpus that small costs no step anything to hold there.
DEVICE_SHARE = 0.1
Batches = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # each call: the next (x, y), (B, T) each


class TokenData:
    """Train and val token ids, each from its own file, read through np.memmap."""

    def __init__(self, folder: str | Path, source: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.source = Path(source) if source is not None else self.folder  # what the user named, for messages
        self.meta = read_meta(self.folder)
        self.tokenizer = meta_tokenizer(self.folder, self.meta)  # checked by read_meta
        self.dtype = np.dtype(self.meta["dtype"])
        self._arrays: dict[str, np.ndarray] = {}
        self._windows: dict[tuple[str, int], np.ndarray] = {}
        for split in SPLITS:
            file = self.folder / f"{split}.bin"
            expected = self.meta[f"{split}_tokens"] * self.dtype.itemsize
            if not file.is_file():
                raise UserError(f"{file}: missing")
            if file.stat().st_size != expected:
                raise UserError(f"{file}: {file.stat().st_size} bytes, meta.json says {expected}; prepare again")
            # A plain ndarray view of the memmap: same file-backed pages, without np.memmap's per-index cost.
            self._arrays[split] = np.asarray(np.memmap(file, dtype=self.dtype, mode="r"))

    @classmethod
    def open(cls, path: str | Path, *, progress: bool = False) -> TokenData:
        """Open a prepared folder, preparing a plain .txt/.xz file into the cache first."""
        return cls(ensure_prepared(path, progress=progress), source=path)

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary (ids the model must embed)."""
        return self.tokenizer.vocab_size

    def tokens(self, split: str) -> np.ndarray:
        """The memory-mapped token ids of one split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self._arrays[split]

    def fingerprint(self) -> str:
        """A short hash of what the corpus is (sources, sizes, counts, vocabulary); cheap on any size."""
        return corpus_fingerprint(self.meta)

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold more than one block plus its target."""
        for split in SPLITS:
            n = len(self._arrays[split])
            if n <= block_size + 1:
                raise UserError(f"{self.source}: {split} split has {n} tokens, fewer than block_size + 2 = "
                                f"{block_size + 2}; use a longer corpus or a smaller block_size")

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x (B, T) and y (B, T) = x shifted by one, from `split`'s own file."""
        key = (split, block_size)
        windows = self._windows.get(key)
        if windows is None:
            # A (N - T, T + 1) strided view of the file: row i is the window starting at token i. No copy.
            windows = np.lib.stride_tricks.sliding_window_view(self.tokens(split), block_size + 1)
            self._windows[key] = windows
        ix = torch.randint(len(windows), (batch_size,), generator=generator).numpy()
        # One gather of B rows reads only those windows' pages: no Python loop, no decode, no encode.
        w = torch.from_numpy(windows[ix].astype(np.int64))  # (B, T+1)
        device = torch.device(device)
        if device.type == "cuda":
            # One pinned copy of the window, overlapping with compute; x and y are views of it on the GPU.
            w = w.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            w = w.to(device)
        return w[:, :-1], w[:, 1:]  # x, y: (B, T) each, y = x shifted by one

    def batches(self, split: str, batch_size: int, block_size: int, device: torch.device, seed: int,
                share: float = DEVICE_SHARE) -> Batches:
        """The training batches of `split`, each call the next random (x, y), reproducible per seed.

        CPU: get_batch with a generator seeded `seed`, as always. CUDA: the corpus on the GPU when it fits `share`
        of the free device memory (windows drawn and gathered there: no copy from the host, no sync per step);
        otherwise get_batch's pinned non-blocking copies, one batch ahead, so the next copy overlaps this step.
        """
        device = torch.device(device)
        if device.type != "cuda":
            gen = torch.Generator().manual_seed(seed)
            return lambda: self.get_batch(split, batch_size, block_size, gen, device)
        tokens = self.tokens(split)
        free, _ = torch.cuda.mem_get_info(device)
        if len(tokens) * 4 <= share * free:
            return OnDevice(tokens, batch_size, block_size, device, seed)
        return Prefetched(self, split, batch_size, block_size, device, seed)


class OnDevice:
    """Random windows drawn and gathered on the GPU from a copy of the corpus there (int32 ids)."""

    where = "device"

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, device: torch.device,
                 seed: int, chunk: int = 1 << 24) -> None:
        self.batch_size = batch_size
        self.tokens = torch.empty(len(tokens), dtype=torch.int32, device=device)  # (N,)
        for i in range(0, len(tokens), chunk):  # in chunks: never a second host copy of a large corpus
            self.tokens[i:i + chunk].copy_(torch.from_numpy(tokens[i:i + chunk].astype(np.int32)))
        self.n_windows = len(tokens) - block_size  # as get_batch: window i is tokens[i : i + T + 1]
        self.offsets = torch.arange(block_size + 1, device=device)  # (T+1,)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(self.n_windows, (self.batch_size,), generator=self.gen, device=self.tokens.device)
        w = self.tokens[ix[:, None] + self.offsets].long()  # (B, T+1): one gather kernel
        return w[:, :-1], w[:, 1:]


class Prefetched:
    """get_batch's pinned, non-blocking copies, one batch ahead: the same batches in the same order."""

    where = "pinned"

    def __init__(self, data: TokenData, split: str, batch_size: int, block_size: int, device: torch.device,
                 seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self._fetch = lambda: data.get_batch(split, batch_size, block_size, gen, device)
        self._next = self._fetch()

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch, self._next = self._next, self._fetch()  # the next copy runs while this batch's step does
        return batch
