"""Sampling from a trained model, and the chat loop around it."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gptcore.config import SEED_MAX
from gptcore.errors import UserError
from gptcore.model import LanguageModel
from gptcore.tokenizer import CharTokenizer


def sample_text(
    model: LanguageModel,
    tokenizer: CharTokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    drop_unknown: bool = False,
) -> str:
    """Continue `prompt` until max_new_tokens or an EOS; only the new text, never the EOS; unknown chars: UserError."""
    # The CLI's flag types refuse these first; this guards callers of the function (NaN fails every `>=`).
    if not max_new_tokens >= 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature must be a number >= 0, got {temperature}")
    if top_k is not None and not top_k > 0:
        raise UserError(f"--top-k must be positive, got {top_k}")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be an integer from 0 to {SEED_MAX}, got {seed}")
    try:
        # An empty prompt still needs one token to condition on: a newline (the course started from id 0).
        ids = tokenizer.encode(prompt, drop_unknown=drop_unknown) or tokenizer.encode("\n", drop_unknown=True) or [0]
    except UserError as exc:
        raise UserError(f"--prompt: {exc} (or pass --drop-unknown)") from None
    device = next(model.parameters()).device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    # A checkpoint from before the EOS token has none (eos_id None): it generates all max_new_tokens.
    eos_id = getattr(tokenizer, "eos_id", None)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=eos_id, generator=gen)
    return tokenizer.decode(until_eos(out[0, len(ids):].tolist(), eos_id))


def until_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """The ids before the first EOS (all of them when there is none): the EOS itself is never shown."""
    return ids[:ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


def chat(
    model: LanguageModel,
    tokenizer: CharTokenizer,
    *,
    read: Callable[[str], str] | None = None,
    write: Callable[[str], None] | None = None,
    drop_unknown: bool = False,
    **sample_kwargs,
) -> int:
    """REPL: prompt -> completion, until EOF or Ctrl-C. Returns the number of prompts answered."""
    read, write = read or input, write or print  # looked up at call time, so tests can patch them
    answered = 0
    write("Type a prompt and press Enter; Ctrl-D or Ctrl-C to quit.")
    while True:
        try:
            prompt = read(">>> ")
        except (EOFError, KeyboardInterrupt):
            write("")
            return answered
        missing = tokenizer.unknown(prompt)
        if missing and not drop_unknown:
            shown = ", ".join(repr(c) for c in missing[:20])
            write(f"not in the vocabulary: {shown}; retype the prompt without them (or start chat with --drop-unknown)")
            continue
        if missing:
            write(f"(dropped characters not in the vocabulary: {', '.join(repr(c) for c in missing[:20])})")
        try:
            write(prompt + sample_text(model, tokenizer, prompt, drop_unknown=True, **sample_kwargs))
        except KeyboardInterrupt:
            write("")
            return answered
        answered += 1
