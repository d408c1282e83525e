import io
import json
import lzma
import tarfile

import numpy as np
import pytest

from gptcore.__main__ import main
from gptcore.cliutil import run
from gptcore.errors import UserError
from gptcore.prepare import DOC_SEPARATOR, prepare
from tests.conftest import CORPUS


def write_tar_xz(path, docs: dict[str, bytes]) -> None:
    """An OpenWebText-style shard: an .xz-compressed tar of documents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in docs.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    path.write_bytes(lzma.compress(buf.getvalue()))


def decode(out, split):
    meta = json.loads((out / "meta.json").read_text())
    ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
    return "".join(meta["tokenizer"]["chars"][i] for i in ids), meta


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "owt"
    src.mkdir()
    write_tar_xz(src / "a_shard.xz", {"d1.txt": b"\xef\xbb\xbfFirst doc.\r\n", "d2.txt": b"Second d\xc3\xb6c."})
    (src / "b_plain.txt").write_bytes(b"Plain text\r\nwith bad \xff byte.")
    (src / "c_single.xz").write_bytes(lzma.compress(b"one xz document"))
    (src / "d_val.txt").write_text("validation text only", encoding="utf-8")
    return src


def test_folder_of_txt_and_xz(corpus, tmp_path):
    out = tmp_path / "prep"
    summary = prepare(corpus, out, workers=2, progress=False)
    train, meta = decode(out, "train")
    val, _ = decode(out, "val")
    sep = DOC_SEPARATOR
    # Tar members are documents; BOM and \r are gone; invalid UTF-8 is replaced and counted.
    assert train == sep.join(["First doc.\n", "Second döc.", "Plain text\nwith bad \ufffd byte.", "one xz document"])
    assert val == "validation text only"  # split by file: the last file of four is val
    assert meta["invalid_utf8_bytes"] == 1 and summary.invalid_utf8_bytes == 1
    assert meta["split_by"] == "file" and meta["dtype"] == "uint8"
    assert [s["split"] for s in meta["sources"]] == ["train", "train", "train", "val"]
    assert meta["sources"][0]["documents"] == 2
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert "\ufeff" not in meta["tokenizer"]["chars"] and "\r" not in meta["tokenizer"]["chars"]
    # One worker gives byte-identical output.
    out1 = tmp_path / "prep1"
    prepare(corpus, out1, workers=1, progress=False)
    assert (out1 / "train.bin").read_bytes() == (out / "train.bin").read_bytes()


def test_single_file_split_is_the_tail(tmp_path):
    src = tmp_path / "book.txt"
    src.write_text("abcdefghij" * 10)
    out = tmp_path / "p"
    prepare(src, out, val_fraction=0.1, progress=False)
    train, meta = decode(out, "train")
    val, _ = decode(out, "val")
    assert train + val == "abcdefghij" * 10
    assert len(val) == 10 and meta["split_by"] == "tail"


def test_corrupt_xz_is_named_or_skipped(corpus, tmp_path):
    good = (corpus / "a_shard.xz").read_bytes()
    (corpus / "a_shard.xz").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UserError, match="a_shard.xz: corrupt or truncated"):
        prepare(corpus, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.partial-*"))  # nothing half-written left behind
    summary = prepare(corpus, tmp_path / "y", skip_bad=True, progress=False)
    assert [p.endswith("a_shard.xz") for p in summary.skipped] == [True]
    train, meta = decode(tmp_path / "y", "train")
    assert train.startswith("Plain text") and meta["skipped"] == summary.skipped


def test_empty_corpus_and_missing_source(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        prepare(tmp_path / "empty.txt", tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="no such file"):
        prepare(tmp_path / "nope.txt", tmp_path / "o", progress=False)
    (tmp_path / "dir").mkdir()
    with pytest.raises(UserError, match="no .txt or .xz files"):
        prepare(tmp_path / "dir", tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="/dev/null: not a regular file or a folder"):  # it said "folder has no"
        prepare("/dev/null", tmp_path / "o", progress=False)


def test_rerun_replaces_previous_output(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    out = tmp_path / "p"
    prepare(src, out, progress=False)
    src.write_text("different text " * 20)
    prepare(src, out, progress=False)
    train, _ = decode(out, "train")
    assert train.startswith("different")


def test_refuses_to_replace_a_folder_that_is_not_prepared_data(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(UserError, match="precious: exists and is not a prepared-data folder"):
        prepare(src, out, progress=False)
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_separator_characters_join_the_vocabulary_even_when_no_file_has_them(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in (("a.txt", "alpha"), ("b.txt", "beta"), ("c.txt", "gamma")):
        (src / name).write_text(text)
    out = tmp_path / "p"
    prepare(src, out, val_fraction=0.34, progress=False)
    train, meta = decode(out, "train")
    assert train == "alpha" + DOC_SEPARATOR + "beta" and "\n" in meta["tokenizer"]["chars"]
    assert [s["tokens"] for s in meta["sources"]] == [5, 4 + len(DOC_SEPARATOR), 5]


def test_cli_refuses_an_out_under_a_file_before_any_work(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(SystemExit) as info:
        run(main, ["prepare", str(src), "--out", str(tmp_path / "f" / "x"), "--no-progress"], prog="python -m gptcore")
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{tmp_path / 'f'} is a file, not a folder; cannot create the prepared-data folder there" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "t.txt"]


def _bpe_text(out, split):
    from gptcore.data import TokenData

    data = TokenData(out)
    return data.tokenizer.decode(data.tokens(split).tolist()), data.meta


def test_bpe_folder_round_trips_and_keeps_the_char_split(corpus, tmp_path):
    prepare(corpus, tmp_path / "char", progress=False)
    summary = prepare(corpus, tmp_path / "bpe", progress=False, tokenizer="bpe", vocab_size=300)
    assert sorted(p.name for p in (tmp_path / "bpe").iterdir()) == [
        "meta.json", "tokenizer.json", "train.bin", "val.bin"]
    for split in ("train", "val"):
        text, meta = _bpe_text(tmp_path / "bpe", split)
        assert text == decode(tmp_path / "char", split)[0]  # the same text, split the same way
        assert meta[f"{split}_chars"] == len(text)
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["type"] == "bpe" and meta["tokenizer"]["file"] == (
        "tokenizer.json")
    assert summary.vocab_size == meta["vocab_size"] <= 300
    assert (tmp_path / "bpe" / "train.bin").stat().st_size == 2 * meta["train_tokens"]


def test_bpe_of_one_file_merges_frequent_pairs_and_splits_the_tail(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("the wizard of oz and the wicked witch\n" * 200, encoding="utf-8")
    prepare(src, tmp_path / "bpe", progress=False, tokenizer="bpe", vocab_size=400)
    train, meta = _bpe_text(tmp_path / "bpe", "train")
    val, _ = _bpe_text(tmp_path / "bpe", "val")
    assert train + val == src.read_text() and len(val) == meta["val_chars"] == 760  # ceil(10% of 7600)
    assert meta["train_tokens"] < meta["train_chars"] / 3  # repeated words become few tokens


def test_uint32_ids_when_the_vocabulary_exceeds_uint16(tmp_path, monkeypatch):
    import gptcore.bpe as bpe_module

    src = tmp_path / "t.txt"
    src.write_text("abc abd abe\n" * 50, encoding="utf-8")
    real = bpe_module.BPETokenizer.vocab_size
    # Training 65,537 tokens is slow; a reported size above uint16 must still pick 4-byte ids.
    monkeypatch.setattr(bpe_module.BPETokenizer, "vocab_size", property(lambda self: 70_000))
    prepare(src, tmp_path / "bpe", progress=False, tokenizer="bpe", vocab_size=300)
    monkeypatch.setattr(bpe_module.BPETokenizer, "vocab_size", real)
    meta = json.loads((tmp_path / "bpe" / "meta.json").read_text())
    assert meta["dtype"] == "uint32"
    assert (tmp_path / "bpe" / "val.bin").stat().st_size == 4 * meta["val_tokens"]


@pytest.mark.parametrize("flags, needle", [
    (["--tokenizer", "bpe", "--vocab-size", "256"], "--vocab-size must be at least 257"),
    (["--vocab-size", "300"], "--vocab-size applies to --tokenizer bpe only"),
])
def test_cli_refuses_a_bad_vocab_size_and_writes_nothing(tmp_path, capsys, flags, needle):
    src = tmp_path / "t.txt"
    src.write_text("hello world " * 20)
    with pytest.raises(SystemExit) as info:
        run(main, ["prepare", str(src), "--out", str(tmp_path / "out"), "--no-progress", *flags],
            prog="python -m gptcore")
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_char_and_bpe_preparations_of_one_file_do_not_collide(tmp_path, monkeypatch):
    from gptcore.prepare import corpus_fingerprint, ensure_prepared, read_meta

    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "t.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")  # enough for 300 tokens
    char = ensure_prepared(src)
    bpe300 = ensure_prepared(src, tokenizer="bpe", vocab_size=300)
    bpe280 = ensure_prepared(src, tokenizer="bpe", vocab_size=280)
    assert len({char, bpe300, bpe280}) == 3
    assert ensure_prepared(src, tokenizer="bpe", vocab_size=300) == bpe300  # cached
    prints = {corpus_fingerprint(read_meta(f)) for f in (char, bpe300, bpe280)}
    assert len(prints) == 3 and {read_meta(f)["vocab_size"] for f in (bpe300, bpe280)} == {300, 280}


def test_a_gptcore_cache_naming_a_file_is_refused_naming_the_variable(tmp_path, monkeypatch):
    from gptcore.prepare import ensure_prepared

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "t.txt"
    src.write_text("hello world\n" * 50, encoding="utf-8")
    with pytest.raises(UserError, match=r"^GPTCORE_CACHE=.*cache: not a folder"):
        ensure_prepared(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "t.txt"]


def test_a_binary_file_is_refused_as_no_text_and_skipped_with_skip_bad(tmp_path, capsys):
    import random

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    (tmp_path / "in" / "b.txt").write_text(CORPUS.read_text(encoding="utf-8")[20_000:30_000], encoding="utf-8")
    # Random bytes: most are no valid UTF-8 (an image or a zip renamed .txt looks the same).
    (tmp_path / "in" / "0.txt").write_bytes(random.Random(0).randbytes(20_000))
    with pytest.raises(UserError, match=r"0\.txt: not UTF-8 text \(.* invalid bytes\).*--skip-bad"):
        prepare(tmp_path / "in", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    summary = prepare(tmp_path / "in", tmp_path / "out", progress=False, skip_bad=True)
    assert [p.rsplit("/", 1)[-1] for p in summary.skipped] == ["0.txt"]
