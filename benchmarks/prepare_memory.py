"""Peak memory and throughput of `python -m gptcore prepare` on generated OpenWebText-style shards.

Generates N .xz shards (each a tar archive of documents, as OpenWebText's are) from the shipped corpus's
paragraphs in random order, then runs `prepare` once per worker count as a child process and reports its
wall time, MB/s of text, and the peak RSS of the largest process in its tree (the parent or any worker).

    python -m benchmarks.prepare_memory --gb 1 --workers 1,2 --dir /tmp/owt-bench
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import random
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gptcore.cliutil import Parser, positive_float, positive_int, run
from gptcore.corpus import DEFAULT_CORPUS

CORPUS = DEFAULT_CORPUS


def make_shard(path: str, text_bytes: int, docs: int, seed: int) -> int:
    """Write one .xz shard holding a tar of `docs` documents, about text_bytes of text in all."""
    paragraphs = [p for p in CORPUS.read_text(encoding="utf-8-sig").split("\n\n") if p.strip()]
    rng = random.Random(seed)
    buf = io.BytesIO()
    written = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in range(docs):
            parts, size = [], 0
            while size < text_bytes // docs:
                p = rng.choice(paragraphs)
                parts.append(p)
                size += len(p.encode()) + 2
            body = "\n\n".join(parts).encode()
            info = tarfile.TarInfo(f"{seed:05d}-{d:04d}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
            written += len(body)
    Path(path).write_bytes(lzma.compress(buf.getvalue(), preset=0))
    return written


def generate(folder: Path, total_bytes: int, shards: int, workers: int) -> int:
    """Generate the shards (in parallel); returns bytes of text."""
    folder.mkdir(parents=True, exist_ok=True)
    per = total_bytes // shards
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(make_shard, str(folder / f"shard_{i:04d}.xz"), per, 100, i) for i in range(shards)]
        return sum(f.result() for f in futures)


# A fresh helper process per measurement: RUSAGE_CHILDREN's ru_maxrss is the RSS of the largest single
# descendant it waited for (prepare itself and, through it, every worker), and it never resets.
_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(src: Path, out: Path, workers: int) -> dict[str, float]:
    """Run prepare in a child process; wall seconds and the largest peak RSS in its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "gptcore", "prepare", str(src),
                           "--out", str(out), "--workers", str(workers), "--no-progress"],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_kib = int(proc.stdout.strip().splitlines()[-1])  # Linux reports KiB
    meta = json.loads((out / "meta.json").read_text())
    return {"workers": workers, "seconds": seconds, "peak_rss_mib": peak_kib / 1024,
            "tokens": meta["train_tokens"] + meta["val_tokens"]}


def main(argv: list[str] | None = None) -> int:
    """Generate shards (if absent), then measure prepare at each worker count."""
    p = Parser(prog="python -m benchmarks.prepare_memory", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=positive_float, default=1.0, help="GB of text to generate")
    p.add_argument("--shards", type=positive_int, default=64, help="how many .xz shards to generate")
    p.add_argument("--workers", type=int_list, default=[1, 2], help="worker counts to measure, e.g. 1,2,4")
    p.add_argument("--dir", type=Path, default=Path("/tmp/owt-bench"), help="where the shards and outputs go")
    args = p.parse_args(argv)
    src = args.dir / "shards"
    if not src.exists():
        t0 = time.perf_counter()
        text = generate(src, int(args.gb * 1e9), args.shards, 2)
        print(f"generated {args.shards} shards, {text / 1e9:.2f} GB of text, in {time.perf_counter() - t0:.0f} s")
    xz_bytes = sum(f.stat().st_size for f in src.iterdir())
    print(f"source: {src} ({xz_bytes / 1e6:.0f} MB of .xz)")
    for w in args.workers:
        r = measure(src, args.dir / f"out-{w}", w)
        mb_s = r["tokens"] / 1e6 / r["seconds"]
        print(f"workers {w}: {r['seconds']:.1f} s, {mb_s:.1f} M chars/s of text, "
              f"peak RSS of the largest process {r['peak_rss_mib']:.0f} MiB")
    return 0


def int_list(text: str) -> list[int]:
    """A flag type: '1,2,4' -> [1, 2, 4], each a positive integer."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None


if __name__ == "__main__":
    run(main, prog="python -m benchmarks.prepare_memory")
