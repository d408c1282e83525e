"""Prompt/completion pairs for fine-tuning: reading the JSONL file, splitting it, and batching it.

Each example is prompt + completion + EOS. The model learns to predict every next token, but only the completion's
tokens and the EOS count in the loss: the targets of prompt positions are IGNORE (cross-entropy's ignore_index).
Examples are right-padded to the longest one in the batch, with IGNORE targets on the padding, so with the causal
model no real token ever attends to another example or to padding (padding only follows the real tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gptcore.errors import UserError
from gptcore.files import parse_json

IGNORE = -100  # torch's cross_entropy ignore_index default: these targets count nowhere in the loss


@dataclass(frozen=True)
class Pair:
    """One line of the pairs file."""

    prompt: str
    completion: str
    line: int  # 1-based line number in the file, for error messages


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL file of {"prompt": str, "completion": str} objects; bad input is a UserError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--data {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--data {path}: a folder; expected a JSONL file of prompt/completion pairs") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--data {path}: unreadable ({exc})") from None
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, a separator) carry no example
        where = f"--data {path}: line {number}"
        item = parse_json(raw, where, 'one {"prompt": ..., "completion": ...} object per line')
        if not isinstance(item, dict):
            raise UserError(f'{where}: expected a JSON object {{"prompt": ..., "completion": ...}}, '
                            f"got {type(item).__name__}")
        for key in ("prompt", "completion"):
            if key not in item:
                raise UserError(f'{where}: missing "{key}"')
            if not isinstance(item[key], str):
                raise UserError(f'{where}: "{key}" must be a string, got {type(item[key]).__name__}')
        if not item["completion"]:
            raise UserError(f'{where}: empty "completion" (nothing to learn)')
        pairs.append(Pair(item["prompt"], item["completion"], number))
    if not pairs:
        raise UserError(f"--data {path}: no pairs (an empty file)")
    return pairs


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, val): a shuffled share val_fraction held out (at least one pair each), the same for the same seed."""
    if len(pairs) < 2:
        raise UserError(f"--data: {len(pairs)} pair; need at least 2 (one to train on, one to validate)")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(len(pairs) * val_fraction)), len(pairs) - 1)
    val = sorted(order[:n_val])  # file order within each split: easier to read and to compare across runs
    train = sorted(order[n_val:])
    return [pairs[i] for i in train], [pairs[i] for i in val]


@dataclass(frozen=True)
class Example:
    """A pair as token ids: the whole sequence (prompt + completion + EOS) and where the completion starts."""

    ids: list[int]
    n_prompt: int


def encode_pairs(pairs: list[Pair], tokenizer, eos_id: int, block_size: int) -> list[Example]:
    """Token ids per pair; pairs longer than the model's context (block_size + 1 tokens) are refused, listed."""
    examples, too_long = [], []
    for pair in pairs:
        prompt = tokenizer.encode(pair.prompt)
        ids = prompt + tokenizer.encode(pair.completion) + [eos_id]
        # An empty prompt: the first completion token has nothing to be predicted from, so it is context.
        n_prompt = max(len(prompt), 1)
        if len(ids) > block_size + 1:  # inputs are ids[:-1]: at most block_size positions
            too_long.append(f"{pair.line} ({len(ids)})")
        examples.append(Example(ids, n_prompt))
    if too_long:
        shown = ", ".join(too_long[:10]) + (f" and {len(too_long) - 10} more" if len(too_long) > 10 else "")
        raise UserError(f"--data: {len(too_long)} pair(s) longer than the model's context of {block_size + 1} tokens "
                        f"(prompt + completion + EOS; line (tokens): {shown}); shorten them")
    return examples


def collate(examples: list[Example], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), both (B, T) with T the longest example - 1: right-padded, targets IGNORE on prompt and padding."""
    T = max(len(e.ids) for e in examples) - 1
    x = torch.zeros((len(examples), T), dtype=torch.long)  # pad id 0: never a target, never attended to by a real one
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids = torch.tensor(e.ids, dtype=torch.long)
        n = len(e.ids) - 1
        x[row, :n] = ids[:-1]
        # Position t predicts token t + 1: it counts when token t + 1 belongs to the completion (or is the EOS).
        y[row, e.n_prompt - 1:n] = ids[e.n_prompt:]
    return x.to(device), y.to(device)


def batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Consecutive chunks of batch_size examples (the last may be smaller): a fixed evaluation order."""
    return [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def completion_loss(model: torch.nn.Module, examples: list[Example], batch_size: int,
                    device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy per completion token (EOS included) over all examples: the prompt tokens do not count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in batches(examples, batch_size):
        x, y = collate(chunk, device)
        logits, _ = model(x)
        V = logits.size(-1)
        # Summed, not averaged per batch: every completion token weighs the same whatever its batch.
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1),
                                                   ignore_index=IGNORE, reduction="sum").item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    return total / count
