"""Char vs byte-level BPE on one corpus: tokens per character, and bits per character at equal training time.

    python -m benchmarks.tokenizers_bench [--data data/wizard_of_oz.txt] [--seconds 120] [--vocab-sizes 512 2048]

For each tokenizer (char, then BPE at each --vocab-sizes) the corpus is prepared into a temporary folder (the
same train/val split of the text every time), and the `baby` preset is trained for --seconds of timed training
(evaluation excluded), so every tokenizer gets the same compute. Its final validation loss is per token (nats);
per character it is
    bits/char = val_loss_per_token x tokens_per_char(val) / ln 2,
with tokens_per_char measured on the validation split, so a tokenizer that packs more text into each token is
neither favoured nor penalised by its loss being per token. Note the context window is block_size tokens, so a
BPE model also sees more characters of context: that is part of what BPE buys. Prints a Markdown table and
writes JSON ({"environment", "settings", "rows": [{tokenizer, vocab_size, tokens_per_char_train,
tokens_per_char_val, steps, train_seconds, val_loss_per_token, bits_per_char}, ...]}).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from gptcore import cliutil as flag
from gptcore.cliutil import Parser, run
from gptcore.corpus import DEFAULT_CORPUS

DEFAULT_DATA = DEFAULT_CORPUS
DEFAULT_OUT = Path("results") / "tokenizers.json"
PROG = "python -m benchmarks.tokenizers_bench"


def build_parser() -> argparse.ArgumentParser:
    """Flags of the measurement."""
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="a .txt/.xz corpus or folder of them (default: the shipped wizard_of_oz.txt)")
    p.add_argument("--seconds", type=flag.positive_float, default=120.0,
                   help="timed training seconds per tokenizer, evaluation excluded (default 120)")
    p.add_argument("--vocab-sizes", type=flag.positive_int, nargs="+", default=[512, 2048],
                   help="BPE vocabulary sizes to compare with char, each at least 257 (default 512 2048)")
    p.add_argument("--preset", default="baby", help="model and training preset (default baby)")
    p.add_argument("--seed", type=flag.seed, default=0, help="random seed of every training run (default 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})")
    return p


def measure(data_dir: Path, label: str, preset: str, seconds: float, seed: int) -> dict[str, Any]:
    """Train `preset` for `seconds` on a prepared folder; its tokens/char and bits/char."""
    from gptcore.config import from_name
    from gptcore.data import TokenData
    from gptcore.train import train

    data = TokenData(data_dir)
    meta = data.meta
    m, t = from_name(preset, device="cpu", max_iters=None, max_seconds=seconds, seed=seed)
    m = m.with_vocab(data.vocab_size)
    result = train(m, t, data, progress=False)
    tpc_val = meta["val_tokens"] / meta["val_chars"]
    return {
        "tokenizer": label,
        "vocab_size": data.vocab_size,
        "tokens_per_char_train": meta["train_tokens"] / meta["train_chars"],
        "tokens_per_char_val": tpc_val,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "val_loss_per_token": result.val_loss,
        "bits_per_char": result.val_loss * tpc_val / math.log(2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, in units a person reads."""
    lines = ["| tokenizer | vocab | tokens/char (val) | steps | train s | val loss (nats/token) | bits/char |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['tokens_per_char_val']:.3f} | {r['steps']:,} | "
                     f"{r['train_seconds']:.1f} | {r['val_loss_per_token']:.4f} | {r['bits_per_char']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Prepare with each tokenizer, train for equal time, print the table, write the JSON."""
    from gptcore.config import PRESETS
    from gptcore.errors import UserError
    from gptcore.prepare import check_tokenizer_choice, prepare

    args = build_parser().parse_args(argv)
    if args.preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}")
    for size in args.vocab_sizes:
        check_tokenizer_choice("bpe", size)  # all refused before any training, not after the first
    if args.out.exists() and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder, expected a JSON file path")
    runs = [("char", "char", None)] + [(f"bpe {n}", "bpe", n) for n in args.vocab_sizes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokbench-") as tmp:
        for label, kind, size in runs:
            folder = Path(tmp) / label.replace(" ", "-")
            prepare(args.data, folder, progress=False, tokenizer=kind, vocab_size=size)
            rows.append(measure(folder, label, args.preset, args.seconds, args.seed))
            print(f"{label}: {rows[-1]['bits_per_char']:.3f} bits/char", flush=True)
    print(table(rows))
    report = {
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "settings": {"data": str(args.data), "preset": args.preset, "seconds": args.seconds, "seed": args.seed},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run(main, prog=PROG)
