"""Write question/answer pairs drawn from the shipped book to data/pairs/wizard_qa.jsonl (deterministic).

Three kinds, each short enough for the `baby` preset's 64-character context (prompt + answer + EOS <= 65):
  who said it:  'Who said "Let us go on"? A:'        -> ' Dorothy'    (the speaker after a quotation)
  what follows: 'What follows "the Wizard of"? A:'   -> ' Oz'         (the next one to three words)
  fill the gap: 'Fill: "the little ___ sat down"? A:' -> ' girl'      (a cloze of one word)
Usage: python scripts/make_pairs.py [--src data/wizard_of_oz.txt] [--out data/pairs/wizard_qa.jsonl] [--n 500]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CHARS = 62  # prompt + completion; + EOS = 63 tokens, within block_size + 1 = 65 of the baby preset
SAID = re.compile(r'"([A-Za-z][^"]{3,40}?)[,!?]" (?:said|cried|asked|answered|replied|exclaimed) '
                  r"((?:the )?[A-Z][a-z]+|the (?:little )?[a-z]+)")
WORD = re.compile(r"[A-Za-z']+")


def who_said(text: str) -> list[tuple[str, str]]:
    """('Who said "..."? A:', ' Speaker') for each quotation followed by `said Name` (or `said the Noun`)."""
    return [(f'Who said "{quote}"? A:', f" {speaker}") for quote, speaker in SAID.findall(text)]


def word_runs(text: str) -> list[list[str]]:
    """Sentences of the narrative as lists of words (those of at least six words)."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return [words for s in sentences if len(words := WORD.findall(s)) >= 6]


def what_follows(runs: list[list[str]], rng: random.Random) -> tuple[str, str]:
    """'What follows "<3-5 words>"? A:' -> the next 1-3 words of the same sentence."""
    words = rng.choice(runs)
    n_ctx, n_ans = rng.randint(3, 5), rng.randint(1, 3)
    start = rng.randrange(0, max(1, len(words) - n_ctx - n_ans + 1))
    ctx, ans = words[start:start + n_ctx], words[start + n_ctx:start + n_ctx + n_ans]
    return f'What follows "{" ".join(ctx)}"? A:', " " + " ".join(ans)


def fill_gap(runs: list[list[str]], rng: random.Random) -> tuple[str, str]:
    """'Fill: "<words with ___>"? A:' -> the one word taken out."""
    words = rng.choice(runs)
    n = rng.randint(4, 7)
    start = rng.randrange(0, max(1, len(words) - n + 1))
    span = words[start:start + n]
    gap = rng.randrange(1, len(span))  # never the first word: the gap has context on its left
    answer = span[gap]
    shown = " ".join("___" if i == gap else w for i, w in enumerate(span))
    return f'Fill: "{shown}"? A:', f" {answer}"


def make_pairs(text: str, n: int, seed: int = 13) -> list[dict[str, str]]:
    """About n distinct pairs: every usable who-said pair (up to a third of n), the rest follows/fill half each."""
    rng = random.Random(seed)
    flat = " ".join(text.split())  # the book's line wraps would split quotations and sentences
    body = flat[flat.find("CHAPTER"):] if "CHAPTER" in flat else flat  # skip the title pages
    seen: set[tuple[str, str]] = set()
    pairs: list[dict[str, str]] = []

    def add(prompt: str, completion: str) -> None:
        if len(prompt) + len(completion) <= MAX_CHARS and (prompt, completion) not in seen:
            seen.add((prompt, completion))
            pairs.append({"prompt": prompt, "completion": completion})

    for prompt, completion in who_said(body):
        if len(pairs) < n // 3:
            add(prompt, completion)
    runs = word_runs(body)
    for _ in range(100 * n):  # bounded: never spins on a text too short for n distinct pairs
        if len(pairs) >= n:
            break
        add(*(what_follows(runs, rng) if rng.random() < 0.5 else fill_gap(runs, rng)))
    rng.shuffle(pairs)  # kinds mixed through the file, so any split holds all of them
    return pairs


def main() -> None:
    """Parse the flags and write the JSONL file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "data" / "wizard_of_oz.txt", help="the book (.txt)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "pairs" / "wizard_qa.jsonl",
                        help="JSONL file to write")
    parser.add_argument("--n", type=int, default=500, help="number of pairs (default 500)")
    parser.add_argument("--seed", type=int, default=13, help="random seed of the draw (default 13)")
    args = parser.parse_args()
    pairs = make_pairs(args.src.read_text(encoding="utf-8-sig"), args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    print(f"{len(pairs)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
