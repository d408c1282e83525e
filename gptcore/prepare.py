"""Corpus preparation: text or OpenWebText-style .xz shards -> train.bin, val.bin, meta.json.

Two streaming passes over the sources, parallel over files:
  1. scan: clean every file, count its characters and collect its character set -> vocabulary;
  2. encode: clean again and write token ids straight into their place in train.bin / val.bin
     (pass 1 gave every file's token count, so each worker knows its offset; no concatenation step).
Memory stays flat: nothing ever holds more than one chunk of one document.
With --tokenizer bpe, pass 2 differs: a byte-level BPE (gptcore.bpe) is trained by streaming the train split's
text through the `tokenizers` trainer, written as tokenizer.json beside meta.json (meta's "tokenizer" entry is
{"type": "bpe", "file": "tokenizer.json", "sha256": ..., "vocab_size": N}), and the text is then streamed again
through it, appending ids to train.bin / val.bin (uint16 up to 65,536 ids, else uint32) in one process.
Everything is written into a temporary folder that replaces `out` at the end (gptcore.files.atomic_dir: a kill
at any instant leaves the old or the new folder). Pool workers end with the process that started them.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import lzma
import math
import os
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gptcore.errors import UserError
from gptcore.files import (
    JSON_MAX_BYTES,
    atomic_dir,
    check_output_dir,
    contained_file,
    fault_point,
    read_json_object,
    recover,
)
from gptcore.procs import end_with
from gptcore.tokenizer import Tokenizer, tokenizer_from_dict

CHUNK_BYTES = 1 << 20  # 1 MiB of raw text per read
DOC_SEPARATOR = "\n\n"  # between consecutive documents (tar members, files) of one split
SOURCE_SUFFIXES = (".txt", ".xz")
META_FORMAT = 1
# What a prepared folder holds (tokenizer.json: BPE only); a folder holding anything else is not replaced.
BPE_FILE = "tokenizer.json"
PREPARED_FILES = ("train.bin", "val.bin", "meta.json", BPE_FILE)

# Count invalid UTF-8 while decoding: a codec error handler that replaces like "replace" does.
_invalid_bytes = 0


def _count_and_replace(exc: UnicodeDecodeError) -> tuple[str, int]:
    global _invalid_bytes
    _invalid_bytes += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("gptcore_count", _count_and_replace)


class BadSource(Exception):
    """A source file that cannot be read (corrupt .xz, truncated tar)."""


@dataclass
class SourceStats:
    """What pass 1 learned about one source file."""

    path: str
    bytes: int
    documents: int = 0
    tokens: int = 0  # characters after cleaning, separators included
    invalid_utf8_bytes: int = 0
    chars: str = ""  # distinct characters (not written to meta.json per file)


def _read_chunks(fileobj) -> Iterator[bytes]:
    while chunk := fileobj.read(CHUNK_BYTES):
        yield chunk


def _is_tar(head: bytes) -> bool:
    # POSIX/GNU tar headers carry "ustar" at offset 257; OpenWebText's shards are such archives.
    return len(head) >= 262 and head[257:262] == b"ustar"


def iter_documents(path: Path) -> Iterator[Iterator[bytes]]:
    """Yield each document of a source as an iterator of raw byte chunks."""
    if path.suffix != ".xz":
        with open(path, "rb") as f:
            yield _read_chunks(f)
        return
    with lzma.open(path, "rb") as xz:
        head = xz.peek(512)[:512] if hasattr(xz, "peek") else b""
        if not _is_tar(head):
            yield _read_chunks(xz)
            return
        # Stream mode ("r|"): members are read in order and never all held in memory.
        with tarfile.open(fileobj=xz, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    member_file = tar.extractfile(member)
                    if member_file is not None:
                        yield _read_chunks(member_file)


def iter_clean_text(path: Path, stats: SourceStats | None = None, first_separator: bool = False) -> Iterator[str]:
    """Yield the cleaned text of a source in chunks: UTF-8 (invalid bytes replaced), no BOM, no \\r."""
    global _invalid_bytes
    before = _invalid_bytes
    try:
        for n_doc, raw_chunks in enumerate(iter_documents(path)):
            if n_doc > 0 or first_separator:
                yield DOC_SEPARATOR
            decoder = codecs.getincrementaldecoder("utf-8")(errors="gptcore_count")
            at_start = True
            # The final decode flushes a truncated multi-byte sequence at the document's end.
            for text in _chain_final(decoder, raw_chunks):
                if at_start and text:
                    text = text.removeprefix("\ufeff")
                    at_start = False
                text = text.replace("\r", "")
                if text:
                    yield text
            if stats is not None:
                stats.documents += 1
    except (lzma.LZMAError, EOFError, tarfile.TarError) as exc:
        raise BadSource(f"{path}: corrupt or truncated archive ({exc})") from None
    finally:
        if stats is not None:
            stats.invalid_utf8_bytes += _invalid_bytes - before


def _chain_final(decoder: codecs.IncrementalDecoder, chunks: Iterator[bytes]) -> Iterator[str]:
    for raw in chunks:
        yield decoder.decode(raw)
    yield decoder.decode(b"", final=True)


# A text with a few bad bytes (a stray Latin-1 character) is repaired: each is replaced and counted. One where more
# than this share of the characters were bad bytes is no text (an image, a zip, an executable) and is refused.
MAX_INVALID_SHARE = 0.10


def check_is_text(path: str | Path, invalid_bytes: int, chars: int) -> None:
    """BadSource when invalid UTF-8 bytes were more than MAX_INVALID_SHARE of a source's characters."""
    if invalid_bytes > MAX_INVALID_SHARE * max(chars, 1):
        raise BadSource(f"{path}: not UTF-8 text ({invalid_bytes:,} of its {chars:,} characters were invalid "
                        f"bytes); expected a text corpus")


def scan_source(path: str) -> SourceStats:
    """Pass 1 for one file: token count, documents, invalid bytes and distinct characters."""
    p = Path(path)
    stats = SourceStats(path=path, bytes=p.stat().st_size)
    seen: set[str] = set()
    for text in iter_clean_text(p, stats):
        stats.tokens += len(text)
        seen.update(text)
    stats.chars = "".join(sorted(seen))
    check_is_text(path, stats.invalid_utf8_bytes, stats.tokens)
    return stats


def encode_source(
    path: str, chars: str, dtype: str, segments: list[tuple[str, int, int]], first_separator: bool
) -> int:
    """Pass 2 for one file: write its token ids into `segments` [(file, token offset, count), ...]."""
    lut = np.zeros(0x110000, dtype=dtype)  # code point -> token id
    lut[[ord(c) for c in chars]] = np.arange(len(chars), dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    chunks = iter_clean_text(Path(path), None, first_separator)
    ids = np.empty(0, dtype=dtype)
    written = 0
    for out_path, offset, count in segments:
        with open(out_path, "r+b") as out:
            out.seek(offset * itemsize)
            room = count
            while room:
                if not len(ids):
                    text = next(chunks, None)
                    if text is None:
                        raise BadSource(f"{path}: changed while being prepared (less text than pass 1 saw)")
                    ids = lut[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
                take = ids[:room]
                out.write(take.tobytes())
                room -= len(take)
                written += len(take)
                ids = ids[len(take):]
    if len(ids) or next(chunks, None) is not None:
        raise BadSource(f"{path}: changed while being prepared (more text than pass 1 saw)")
    return written


def list_sources(src: Path) -> list[Path]:
    """The .txt/.xz files of a folder (recursively, sorted), or the one file given."""
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    if src.is_file():
        if src.suffix not in SOURCE_SUFFIXES:
            raise UserError(f"{src}: expected a .txt or .xz file, or a folder of them")
        return [src]
    if not src.is_dir():  # a device, a pipe or a socket
        raise UserError(f"{src}: not a regular file or a folder; expected a .txt or .xz file, or a folder of them")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    if not files:
        raise UserError(f"{src}: folder has no .txt or .xz files")
    return files


@dataclass
class PrepareSummary:
    """What `prepare` wrote, for the caller and the summary line."""

    out: str
    vocab_size: int
    dtype: str
    train_tokens: int
    val_tokens: int
    files: int
    skipped: list[str] = field(default_factory=list)
    invalid_utf8_bytes: int = 0
    seconds: float = 0.0
    source_bytes: int = 0

    def line(self) -> str:
        """One human-readable summary line."""
        mb_s = self.source_bytes / 1e6 / max(self.seconds, 1e-9)
        text = (
            f"prepared {self.files} file(s) -> {self.out}: vocab {self.vocab_size} ({self.dtype}), "
            f"train {self.train_tokens:,} tokens, val {self.val_tokens:,} tokens, "
            f"{self.invalid_utf8_bytes} invalid UTF-8 byte(s) replaced, {self.seconds:.1f} s ({mb_s:.1f} MB/s)"
        )
        if self.skipped:
            text += f", skipped {len(self.skipped)} bad file(s): {', '.join(self.skipped)}"
        return text


def _map(fn: Callable, args: list[tuple], workers: int, desc: str, total_bytes: int, sizes: list[int],
         progress: bool) -> Iterator:
    """Run fn(*a) for each a, in order, over a process pool (or in-process for 1 worker), with tqdm."""
    # disable=None: tqdm draws only when stderr is a terminal (redirected, its \r redraws would fill the log).
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=None if progress else True,
               leave=False)
    try:
        if workers <= 1:
            results = (_call(fn, a) for a in args)
            for i, res in enumerate(results):
                bar.update(sizes[i])
                bar.set_postfix(files=f"{i + 1}/{len(args)}")
                yield res
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=end_with, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_call, fn, a) for a in args]
                for i, fut in enumerate(futures):
                    res = fut.result()
                    bar.update(sizes[i])
                    bar.set_postfix(files=f"{i + 1}/{len(args)}")
                    yield res
    finally:
        bar.close()


def _call(fn: Callable, args: tuple):
    # BadSource travels back as a value so one bad shard does not tear down the pool.
    try:
        return fn(*args)
    except BadSource as exc:
        return exc


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    tokenizer: str = "char",
    vocab_size: int | None = None,
) -> PrepareSummary:
    """Prepare a corpus (a .txt file or a folder of .txt/.xz) into `out`; see the module docstring."""
    vocab_size = _check_choices(tokenizer, vocab_size, val_fraction, workers)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    check_output_dir(out, "prepared-data folder", "meta.json", PREPARED_FILES)  # before any work, not after it
    corpus = _scan(src, val_fraction, workers, skip_bad, progress)
    if tokenizer == "bpe":
        n_train = _split_point(src, corpus, val_fraction, "characters")
        return _prepare_bpe(out, corpus.files, corpus.stats, corpus.split, corpus.first_sep, corpus.by_file,
                            n_train, vocab_size, corpus.skipped, val_fraction, t0)
    return _prepare_char(src, out, corpus, val_fraction, workers, progress, t0)


@dataclass
class _Corpus:
    """The sources after pass 1 (bad ones dropped with --skip-bad), each with its split and its scan."""

    files: list[Path]
    sizes: list[int]
    split: list[str]  # "train" or "val", per file
    stats: list[SourceStats]  # (a BadSource in place of each bad file until _drop_bad)
    skipped: list[str]
    by_file: bool  # a folder of several files is split by file, one file by its tail
    first_sep: list[bool] = field(default_factory=list)  # the file starts with DOC_SEPARATOR
    chars: str = ""  # the corpus's distinct characters, sorted
    total: int = 0  # its tokens (characters), separators included


def _check_choices(tokenizer: str, vocab_size: int | None, val_fraction: float, workers: int) -> int | None:
    """The BPE vocabulary size (None for char); bad flags are UserErrors naming them."""
    vocab_size = check_tokenizer_choice(tokenizer, vocab_size)
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    return vocab_size


def _scan(src: Path, val_fraction: float, workers: int, skip_bad: bool, progress: bool) -> _Corpus:
    """Pass 1: list the sources, give each its split, scan them (each file's own text), then join the splits."""
    files = list_sources(src)
    sizes = [p.stat().st_size for p in files]
    # The split: by file for a folder of several files (the last files go to val), else the file's tail.
    by_file = len(files) > 1
    n_val_files = min(len(files) - 1, max(1, round(len(files) * val_fraction))) if by_file else 0
    split = ["train"] * (len(files) - n_val_files) + ["val"] * n_val_files
    found = []
    for res in _map(scan_source, [(str(p),) for p in files], workers, "scan", sum(sizes), sizes, progress):
        if isinstance(res, BadSource) and not skip_bad:  # at once: the rest need not be scanned
            raise UserError(f"{res} (use --skip-bad to skip it)")
        found.append(res)
    corpus = _drop_bad(src, _Corpus(files, sizes, split, found, [], by_file))
    _join(src, corpus)
    return corpus


def _drop_bad(src: Path, corpus: _Corpus) -> _Corpus:
    """The corpus without the sources that could not be read (--skip-bad), named in `skipped`."""
    bad = [i for i, s in enumerate(corpus.stats) if isinstance(s, BadSource)]
    if not bad:
        return corpus
    skipped = [str(corpus.stats[i]).split(": ", 1)[0] for i in bad]
    keep = [i for i in range(len(corpus.files)) if i not in bad]
    if not keep:
        raise UserError(f"{src}: every source file is corrupt")
    files, sizes, split, stats = ([xs[i] for i in keep] for xs in (corpus.files, corpus.sizes, corpus.split,
                                                                    corpus.stats))
    if (corpus.by_file and "val" not in split) or "train" not in split:
        raise UserError(f"{src}: after skipping bad files, train or val has no files left")
    return _Corpus(files, sizes, split, stats, skipped, corpus.by_file)


def _join(src: Path, corpus: _Corpus) -> None:
    """Count the separators between files of one split, and collect the corpus's characters and size."""
    # A file that follows another of the same split starts with a separator, which counts as its tokens.
    split = corpus.split
    corpus.first_sep = [i > 0 and split[i - 1] == split[i] for i in range(len(corpus.files))]
    for s, sep in zip(corpus.stats, corpus.first_sep):
        s.tokens += len(DOC_SEPARATOR) if sep else 0
    separators = set(DOC_SEPARATOR) if any(corpus.first_sep) else set()
    corpus.chars = "".join(sorted(set().union(separators, *(s.chars for s in corpus.stats))))
    corpus.total = sum(s.tokens for s in corpus.stats)
    if corpus.total == 0:
        raise UserError(f"{src}: corpus is empty (no text after cleaning)")


def _split_point(src: Path, corpus: _Corpus, val_fraction: float, unit: str) -> int:
    """Tokens (characters) of the train split; a UserError when either split would be empty."""
    n_train = _train_chars(corpus.total, corpus.stats, corpus.split, corpus.by_file, val_fraction)
    if n_train <= 0 or corpus.total - n_train <= 0:
        raise UserError(f"{src}: corpus too small to split ({corpus.total} {unit})")
    return n_train


def _prepare_char(src: Path, out: Path, corpus: _Corpus, val_fraction: float, workers: int, progress: bool,
                  t0: float) -> PrepareSummary:
    """Pass 2 for the char tokenizer: each worker writes its files' token ids into their ranges of the bins."""
    if len(corpus.chars) > 65536:
        raise UserError(f"{src}: {len(corpus.chars)} distinct characters do not fit uint16 token ids")
    dtype = "uint8" if len(corpus.chars) <= 256 else "uint16"
    n_train = _split_point(src, corpus, val_fraction, "tokens")
    n_val = corpus.total - n_train
    with atomic_dir(out, "meta.json", "prepared-data folder", PREPARED_FILES) as tmp:
        paths = _allocate(tmp, {"train": n_train, "val": n_val}, dtype)
        for res in _map(encode_source, _encode_args(corpus, paths, dtype, n_train, n_val), workers, "encode",
                        sum(corpus.sizes), corpus.sizes, progress):
            if isinstance(res, BadSource):
                raise UserError(str(res))
        fault_point("prepare:encoded")
        meta = _char_meta(corpus, dtype, n_train, n_val, val_fraction)
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return PrepareSummary(
        out=str(out), vocab_size=len(corpus.chars), dtype=dtype, train_tokens=n_train, val_tokens=n_val,
        files=len(corpus.files), skipped=corpus.skipped, invalid_utf8_bytes=meta["invalid_utf8_bytes"],
        seconds=time.perf_counter() - t0, source_bytes=sum(corpus.sizes),
    )


def _allocate(tmp: Path, tokens: dict[str, int], dtype: str) -> dict[str, Path]:
    """train.bin and val.bin at their final sizes, so that workers can write their ranges in any order."""
    paths = {name: tmp / f"{name}.bin" for name in tokens}
    itemsize = np.dtype(dtype).itemsize
    for name, n in tokens.items():
        with open(paths[name], "wb") as f:
            f.truncate(n * itemsize)
    fault_point("prepare:allocated")
    return paths


def _encode_args(corpus: _Corpus, paths: dict[str, Path], dtype: str, n_train: int, n_val: int) -> list[tuple]:
    """encode_source's arguments per file: where in train.bin / val.bin its token ids go."""
    args = []
    cursor = {"train": 0, "val": 0}
    for i, s in enumerate(corpus.stats):
        if corpus.by_file:
            name = corpus.split[i]
            segs = [(str(paths[name]), cursor[name], s.tokens)]
            cursor[name] += s.tokens
        else:  # one file: the head goes to train, the tail to val
            segs = [(str(paths["train"]), 0, n_train), (str(paths["val"]), 0, n_val)]
        args.append((str(corpus.files[i]), corpus.chars, dtype, segs, corpus.first_sep[i]))
    return args


def _char_meta(corpus: _Corpus, dtype: str, n_train: int, n_val: int, val_fraction: float) -> dict[str, Any]:
    """meta.json of a char-tokenized folder."""
    return {
        "format": META_FORMAT,
        "tokenizer": {"type": "char", "chars": list(corpus.chars)},
        "vocab_size": len(corpus.chars),
        "dtype": dtype,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "train_chars": n_train,
        "val_chars": n_val,
        "split_by": "file" if corpus.by_file else "tail",
        "val_fraction": val_fraction,
        "invalid_utf8_bytes": sum(s.invalid_utf8_bytes for s in corpus.stats),
        "skipped": corpus.skipped,
        "sources": [
            {**{k: v for k, v in asdict(s).items() if k != "chars"}, "split": corpus.split[i] if corpus.by_file
             else "both"}
            for i, s in enumerate(corpus.stats)
        ],
    }


TOKENIZERS = ("char", "bpe")
DEFAULT_BPE_VOCAB = 2048


def check_tokenizer_choice(tokenizer: str, vocab_size: int | None) -> int | None:
    """The BPE vocabulary size to train (None for char); bad choices are UserErrors naming the flag."""
    if tokenizer not in TOKENIZERS:
        raise UserError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "char":
        if vocab_size is not None:
            raise UserError("--vocab-size applies to --tokenizer bpe only (the char vocabulary is the corpus's "
                            "characters)")
        return None
    from gptcore.bpe import EOS_TOKEN, MIN_VOCAB_SIZE

    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (the 256-byte alphabet + {EOS_TOKEN}) "
                        f"for --tokenizer bpe, got {vocab_size}")
    return vocab_size


def _train_chars(total: int, stats: list[SourceStats], split: list[str], by_file: bool, val_fraction: float) -> int:
    """Characters of the train split: whole train files, or the head of the one file."""
    if by_file:
        return sum(s.tokens for s, sp in zip(stats, split) if sp == "train")
    return total - math.ceil(total * val_fraction)


def _split_text(files: list[Path], split: list[str], first_sep: list[bool], by_file: bool,
                n_train: int) -> Iterator[tuple[str, str]]:
    """(split, cleaned text chunk) over the whole corpus, in order: the same split as the char preparation."""
    seen = 0
    try:
        for i, path in enumerate(files):
            for text in iter_clean_text(path, None, first_sep[i]):
                if by_file:
                    yield split[i], text
                    continue
                if seen < n_train:  # one file: its first n_train characters are train, the rest val
                    head = text[:n_train - seen]
                    yield "train", head
                    text = text[len(head):]
                    seen += len(head)
                if text:
                    yield "val", text
    except BadSource as exc:
        raise UserError(str(exc)) from None


def _line_chunks(pieces: Iterator[tuple[str, str]], size: int = CHUNK_BYTES) -> Iterator[tuple[str, str]]:
    """The same text re-cut at line ends into chunks of about `size` characters, never across splits."""
    # Cutting at "\n" rather than anywhere keeps chunk boundaries from splitting words (BPE merges across them).
    name, buf = None, ""
    for split_name, text in pieces:
        if split_name != name:
            if buf:
                yield name, buf
            name, buf = split_name, ""
        buf += text
        while len(buf) >= size:
            cut = buf.rfind("\n", 0, size) + 1 or size  # no line end in the chunk: cut anyway
            yield name, buf[:cut]
            buf = buf[cut:]
    if buf:
        yield name, buf


def _prepare_bpe(out: Path, files: list[Path], stats: list[SourceStats], split: list[str], first_sep: list[bool],
                 by_file: bool, n_train: int, vocab_size: int, skipped: list[str], val_fraction: float,
                 t0: float) -> PrepareSummary:
    """Pass 2 for --tokenizer bpe: train the BPE on the train split, then encode both splits (see module doc)."""
    from gptcore.bpe import BPETokenizer

    def chunks(only: str | None = None) -> Iterator[tuple[str, str]]:
        pieces = _split_text(files, split, first_sep, by_file, n_train)
        return ((n, t) for n, t in _line_chunks(pieces) if only is None or n == only)

    bpe = BPETokenizer.train((t for _, t in chunks("train")), vocab_size)
    dtype = "uint16" if bpe.vocab_size <= 2**16 else "uint32"
    counts = {"train": 0, "val": 0}
    with atomic_dir(out, "meta.json", "prepared-data folder", PREPARED_FILES) as tmp:
        (tmp / BPE_FILE).write_text(bpe.to_json(), encoding="utf-8")
        outs = {name: open(tmp / f"{name}.bin", "wb") for name in counts}  # noqa: SIM115 (closed below)
        try:
            names: deque[str] = deque()  # the split of each chunk taken by the encoder and not yet written

            def texts() -> Iterator[str]:
                for name, text in chunks():
                    names.append(name)
                    yield text

            for ids in bpe.encode_chunks(texts()):
                name = names.popleft()
                outs[name].write(np.asarray(ids, dtype=dtype).tobytes())
                counts[name] += len(ids)
        finally:
            for f in outs.values():
                f.close()
        fault_point("prepare:encoded")
        if not counts["train"] or not counts["val"]:
            raise UserError(f"{files[0]}: corpus too small to split ({sum(counts.values())} tokens)")
        invalid = sum(s.invalid_utf8_bytes for s in stats)
        total_chars = sum(s.tokens for s in stats)
        meta = {
            "format": META_FORMAT,
            "tokenizer": {"type": "bpe", "file": BPE_FILE, "sha256": bpe.sha256(), "vocab_size": bpe.vocab_size},
            "vocab_size": bpe.vocab_size,
            "dtype": dtype,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_chars": n_train,
            "val_chars": total_chars - n_train,
            "split_by": "file" if by_file else "tail",
            "val_fraction": val_fraction,
            "invalid_utf8_bytes": invalid,
            "skipped": skipped,
            "sources": [
                {**{k: v for k, v in asdict(s).items() if k not in ("chars", "tokens")}, "chars": s.tokens,
                 "split": split[i] if by_file else "both"}
                for i, s in enumerate(stats)
            ],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return PrepareSummary(
        out=str(out), vocab_size=bpe.vocab_size, dtype=dtype, train_tokens=counts["train"],
        val_tokens=counts["val"], files=len(files), skipped=skipped, invalid_utf8_bytes=invalid,
        seconds=time.perf_counter() - t0, source_bytes=sum(p.stat().st_size for p in files),
    )


def cache_root() -> Path:
    """Where on-the-fly preparations of plain text files go ($GPTCORE_CACHE, else ~/.cache/gptcore)."""
    env = os.environ.get("GPTCORE_CACHE")
    if env:
        root = Path(env)
        if root.exists() and not root.is_dir():  # the user set it: name the variable, not only the path
            raise UserError(f"GPTCORE_CACHE={env}: not a folder; expected a folder for prepared corpora (or unset "
                            f"it to use ~/.cache/gptcore)")
        return root
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptcore"


def ensure_prepared(path: str | Path, *, progress: bool = False, tokenizer: str = "char",
                    vocab_size: int | None = None) -> Path:
    """A prepared-data folder for `path`: the folder itself, or a cached preparation of a text/.xz file."""
    path = Path(path)
    recover(path, "meta.json")  # a prepare killed between its two renames is finished here
    if path.is_dir() and (path / "meta.json").exists():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (expected a .txt file or a prepared-data folder)")
    if path.is_dir():
        raise UserError(f"{path}: not a prepared-data folder (no meta.json); run `python -m gptcore prepare` on it")
    # Key the cache on the file's identity and version, so an edited corpus is prepared again.
    st = path.stat()
    vocab_size = check_tokenizer_choice(tokenizer, vocab_size)
    identity = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if tokenizer != "char":  # char keys stay as they were (existing caches valid); others can never equal them
        identity += f"|{tokenizer}|{vocab_size}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    out = cache_root() / f"{path.stem}-{key}"
    recover(out, "meta.json")
    if not (out / "meta.json").exists():
        prepare(path, out, progress=progress, tokenizer=tokenizer, vocab_size=vocab_size)
    return out


def read_meta(folder: str | Path) -> dict:
    """A prepared folder's meta.json, checked before any of it is used; every problem names the file."""
    meta_path = Path(folder) / "meta.json"
    missing = f"not found; is {folder} a prepared-data folder?"
    if not os.path.lexists(meta_path):
        raise UserError(f"{meta_path}: {missing}")
    try:
        meta = read_json_object(meta_path, "a JSON object", missing=missing)
    except UserError as exc:  # a damaged meta.json: preparing again is the fix
        raise UserError(f"{exc}; prepare the corpus again") from None
    problem = _meta_problem(meta, Path(folder))
    if problem:
        raise UserError(f"{meta_path}: {problem}; prepare the corpus again")
    return meta


def meta_tokenizer(folder: str | Path, meta: dict) -> Tokenizer:
    """The tokenizer a prepared folder's meta.json names: stored in it (char) or in its file (BPE)."""
    entry = meta.get("tokenizer")
    if isinstance(entry, dict) and entry.get("type") == "bpe" and "file" in entry:
        from gptcore.bpe import BPETokenizer

        # A name read from meta.json: it must stay inside the folder and be a bounded regular file (not ../../x or
        # a link to /dev/zero).
        file = contained_file(folder, entry["file"], "meta.json's tokenizer file", JSON_MAX_BYTES)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file.name}: unreadable ({exc})") from None
        # The fingerprint covers the file through this hash: a replaced tokenizer.json must not pass unnoticed.
        if hashlib.sha256(text.encode()).hexdigest() != entry.get("sha256"):
            raise ValueError(f"{file.name} is not the tokenizer this data was encoded with (edited or replaced)")
        return BPETokenizer.from_json(text)
    return tokenizer_from_dict(entry)


def _meta_problem(meta: object, folder: Path) -> str | None:
    """What is wrong with a meta.json's content (None: nothing), checked before any of it is used."""
    if not isinstance(meta, dict):
        return "expected a JSON object"
    if meta.get("format") != META_FORMAT:
        return f"unknown format {meta.get('format')!r}"
    try:
        tokenizer = meta_tokenizer(folder, meta)
    except (ValueError, UserError) as exc:
        return f"bad tokenizer ({exc})"
    if meta.get("vocab_size") != tokenizer.vocab_size:
        return f"vocab_size {meta.get('vocab_size')!r} but the tokenizer has {tokenizer.vocab_size} characters"
    fits = {"uint8": 2**8, "uint16": 2**16, "uint32": 2**32}
    if meta.get("dtype") not in fits or tokenizer.vocab_size > fits[meta["dtype"]]:
        return f"dtype {meta.get('dtype')!r} cannot hold {tokenizer.vocab_size} token ids"
    for key in ("train_tokens", "val_tokens"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} must be a positive integer, got {value!r}"
    return None


def corpus_fingerprint(meta: dict) -> str:
    """A short hash of what a prepared corpus is (sources, sizes, counts, tokenizer); cheap at any size."""
    # The tokenizer entry names the type and, for BPE, the vocabulary size and tokenizer.json's sha256.
    keys = ("tokenizer", "train_tokens", "val_tokens", "sources", "split_by", "val_fraction")
    blob = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
