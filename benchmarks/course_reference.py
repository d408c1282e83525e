"""The GPT and the batch reader written the way the course writes them: the baseline we measure against.

Kept deliberately as the course has it (one module per head joined with torch.cat, a (T, T) mask per head,
an mmap reader that decodes a random byte range and encodes it character by character on every batch).
Do not "fix" this file: it is the reference point of benchmarks/vs_course.py.
"""

from __future__ import annotations

import mmap
import random

import torch
import torch.nn as nn
from torch.nn import functional as F


class Head(nn.Module):
    """One head of self-attention."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, hs)."""
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)
        return wei @ v


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, concatenated."""

    def __init__(self, num_heads: int, head_size: int, n_embd: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class FeedFoward(nn.Module):
    """Linear -> ReLU -> Linear -> Dropout (the course's spelling)."""

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.net(x)


class Block(nn.Module):
    """Attention then feed-forward, post-norm."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float) -> None:
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_head, head_size, n_embd, block_size, dropout)
        self.ffwd = FeedFoward(n_embd, dropout)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        y = self.sa(x)
        x = self.ln1(x + y)
        y = self.ffwd(x)
        return self.ln2(x + y)


class GPTLanguageModel(nn.Module):
    """The course's final GPT."""

    def __init__(self, vocab_size: int, n_embd: int, n_head: int, n_layer: int, block_size: int,
                 dropout: float) -> None:
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, index: torch.Tensor, targets: torch.Tensor | None = None):
        """(B, T) -> logits, loss."""
        B, T = index.shape
        tok_emb = self.token_embedding_table(index)
        pos_emb = self.position_embedding_table(torch.arange(T, device=index.device))
        x = tok_emb + pos_emb
        x = self.blocks(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        B, T, C = logits.shape
        logits = logits.view(B * T, C)
        targets = targets.view(B * T)
        return logits, F.cross_entropy(logits, targets)


class CourseReader:
    """The course's get_batch: mmap a text file, read a random byte range, decode, encode, stack."""

    def __init__(self, filename: str, chars: list[str], batch_size: int, block_size: int) -> None:
        self.filename = filename
        self.string_to_int = {ch: i for i, ch in enumerate(chars)}
        self.batch_size, self.block_size = batch_size, block_size

    def encode(self, s: str) -> list[int]:
        """Characters -> ids; the course's encoder has no unknown-character handling, so skip them here."""
        return [self.string_to_int[c] for c in s if c in self.string_to_int]

    def get_random_chunk(self) -> torch.Tensor:
        """A random chunk of block_size * batch_size bytes, decoded and encoded."""
        with open(self.filename, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            file_size = len(mm)
            start_pos = random.randint(0, file_size - self.block_size * self.batch_size)
            mm.seek(start_pos)
            block = mm.read(self.block_size * self.batch_size - 1)
            decoded_block = block.decode("utf-8", errors="ignore").replace("\r", "")
            return torch.tensor(self.encode(decoded_block), dtype=torch.long)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, block_size)."""
        data = self.get_random_chunk()
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,))
        x = torch.stack([data[i:i + self.block_size] for i in ix])
        y = torch.stack([data[i + 1:i + self.block_size + 1] for i in ix])
        return x, y
