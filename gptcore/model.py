"""The course's language models: a bigram table and a decoder-only GPT.

Shapes: B = batch, T = time (sequence), C = n_embed, nh = n_head, hs = head_size = C // nh, V = vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptcore.config import ModelConfig


class LanguageModel(nn.Module):
    """What the bigram and the GPT share: the loss, sampling and parameter counts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("vocab_size must be set (> 0) to build a model")
        self.config = cfg
        self.block_size = cfg.block_size

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        if targets is None:
            return None
        V = logits.size(-1)
        # Cross-entropy in float32 even under autocast: the log-softmax over V is where bf16 hurts.
        # reshape, not view: targets may be a strided slice of the batch window (see TokenData.get_batch).
        return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; with exclude_embeddings, without the lookup tables (which cost no FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens; stop once every row has sampled eos_id."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        was_training = self.training
        self.eval()
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            # The positional table has block_size rows: feed at most the last block_size tokens.
            idx_cond = idx[:, -self.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float()  # (B, V)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                # Shift by the row's max first: a tiny temperature then sends the others to -inf, never inf - inf.
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if eos_id is not None:
                done |= idx_next.squeeze(1) == eos_id
                if bool(done.all()):
                    break
        self.train(was_training)
        return idx


class BigramLanguageModel(LanguageModel):
    """The course's first model: the next token depends only on the current one (a V x V table)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.token_embedding_table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, V), loss or None."""
        logits = self.token_embedding_table(idx)  # (B, T, V)
        return logits, self._loss(logits, targets)


class CausalSelfAttention(nn.Module):
    """All heads at once: one qkv projection, then attention per head in a (B, nh, T, hs) batch."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        # One (C, 3C) matmul instead of the course's 3 x nh small ones: same maths, far fewer kernels.
        self.qkv = nn.Linear(cfg.n_embed, 3 * cfg.n_embed, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embed, cfg.n_embed, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.use_sdpa = True  # False: the course's explicit masked softmax (for teaching and as test oracle)
        T = cfg.block_size
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.use_sdpa:
            # Fused kernel (flash / memory-efficient where available); never builds the (T, T) matrix.
            dropout_p = self.dropout if self.training else 0.0
            if q.device.type == "cpu" and q.dtype != torch.float32:
                # Measured on an AVX512-BF16 CPU (baby config): the CPU flash kernel's bf16 backward is ~3x
                # slower than SDPA's math backend, which makes a bf16 step 1.3x slower than it need be.
                with sdpa_kernel(SDPBackend.MATH):
                    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """Linear -> ReLU (or GELU) -> Linear, 4x wide, then dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.n_embed, 4 * cfg.n_embed, bias=cfg.bias),
            nn.ReLU() if cfg.activation == "relu" else nn.GELU(),
            nn.Linear(4 * cfg.n_embed, cfg.n_embed, bias=cfg.bias),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.net(x)


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each with a residual and a LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.sa = CausalSelfAttention(cfg)
        self.ffwd = FeedForward(cfg)
        self.ln1 = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)
        self.ln2 = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        if self.pre_norm:  # GPT-2: x + f(LN(x)); trains more stably when deep
            x = x + self.sa(self.ln1(x))
            return x + self.ffwd(self.ln2(x))
        x = self.ln1(x + self.sa(x))  # the course's (and the 2017 paper's) Add & Norm
        return self.ln2(x + self.ffwd(x))


class GPT(LanguageModel):
    """Decoder-only transformer with learned positional embeddings, as the course builds it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.token_embedding_table = nn.Embedding(cfg.vocab_size, cfg.n_embed)
        self.position_embedding_table = nn.Embedding(cfg.block_size, cfg.n_embed)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embed, cfg.vocab_size, bias=cfg.bias)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The course's init: N(0, 0.02) weights, zero biases. PyTorch's default (Kaiming-uniform) makes
        # the initial loss far above ln(V) and slows the first hundred steps.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_attention(self, impl: str) -> None:
        """Switch every block between "sdpa" (fused) and "manual" (explicit masked softmax)."""
        if impl not in ("sdpa", "manual"):
            raise ValueError(f"attention implementation must be sdpa or manual, got {impl!r}")
        for block in self.blocks:
            block.sa.use_sdpa = impl == "sdpa"

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> logits (B, T, V), loss (scalar) or None."""
        _, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.token_embedding_table(idx) + self.position_embedding_table(pos)  # (B, T, C)
        x = self.blocks(x)  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, self._loss(logits, targets)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, as nanoGPT counts them: 6N + 12 * L * C * T (attention scores)."""
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        return 6 * self.num_params(exclude_embeddings=True) + 12 * cfg.n_layer * cfg.n_embed * T


def build_model(cfg: ModelConfig, kind: str = "gpt") -> LanguageModel:
    """A GPT (or, with kind="bigram", the bigram baseline) for `cfg`."""
    if kind == "gpt":
        return GPT(cfg)
    if kind == "bigram":
        return BigramLanguageModel(cfg)
    raise ValueError(f"model kind must be gpt or bigram, got {kind!r}")


@torch.no_grad()
def grow_vocab(model: LanguageModel, vocab_size: int) -> LanguageModel:
    """Add rows for new token ids (appended at the end) to the embedding and the output layer, in place.

    Each new row is the mean of the existing ones: a new token (EOS, a new character) starts as an "average" token
    whose logit is typical rather than random, so the loss on the old tokens does not jump, and fine-tuning moves
    it from there. Existing ids keep their rows exactly.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")
    if vocab_size == old:
        return model
    extra = vocab_size - old

    def more_rows(weight: torch.Tensor) -> nn.Parameter:
        new = weight.mean(dim=0, keepdim=True).expand(extra, *weight.shape[1:])
        return nn.Parameter(torch.cat([weight, new], dim=0))

    table = model.token_embedding_table
    table.weight = more_rows(table.weight)
    table.num_embeddings = vocab_size
    if isinstance(model, BigramLanguageModel):  # the table is also the output layer: new columns too
        table.weight = nn.Parameter(torch.cat([table.weight, table.weight.mean(dim=1, keepdim=True).expand(
            vocab_size, extra)], dim=1))
        table.embedding_dim = vocab_size
    else:
        head = model.lm_head
        head.weight = more_rows(head.weight)
        if head.bias is not None:
            head.bias = more_rows(head.bias)
        head.out_features = vocab_size
    model.config = model.config.with_vocab(vocab_size)
    return model
