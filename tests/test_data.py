import json
import shutil

import numpy as np
import pytest
import torch

from gptcore.data import TokenData
from gptcore.errors import UserError
from gptcore.prepare import ensure_prepared
from tests.conftest import CORPUS


def test_batches_are_shifted_windows_from_their_own_split(data):
    gen = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", 8, 32, gen)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every val window occurs in val.bin, so validation never reads training text.
    val = np.asarray(data.tokens("val")).astype(np.int64)
    vx, _ = data.get_batch("val", 16, 32, gen)
    windows = np.lib.stride_tricks.sliding_window_view(val, 32)
    for row in vx.numpy():
        assert (windows == row).all(axis=1).any()


def test_train_and_val_are_disjoint_text(data):
    tok = data.tokenizer
    train = tok.decode(np.asarray(data.tokens("train")).tolist())
    val = tok.decode(np.asarray(data.tokens("val")).tolist())
    assert len(val) > 0.09 * (len(train) + len(val))
    # The last 10 % of the book: a 200-char piece of val text never occurs in train.
    assert val[1000:1200] not in train


def test_same_generator_same_batches(data):
    a = data.get_batch("train", 4, 16, torch.Generator().manual_seed(5))
    b = data.get_batch("train", 4, 16, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])


def test_plain_text_is_prepared_on_the_fly_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    folder = ensure_prepared(CORPUS)
    assert folder.parent == tmp_path / "cache" and (folder / "meta.json").exists()
    assert ensure_prepared(CORPUS) == folder  # cached: the second call prepares nothing


def test_block_larger_than_split_and_truncated_files_fail_clearly(prepared, tmp_path):
    data = TokenData(prepared)
    with pytest.raises(UserError, match="val split has .* tokens, fewer than block_size"):
        data.check_block_size(100_000)  # longer than val (23k), shorter than train
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "train.bin"):
        (broken / name).write_bytes((prepared / name).read_bytes())
    (broken / "val.bin").write_bytes((prepared / "val.bin").read_bytes()[:-10])
    with pytest.raises(UserError, match="val.bin: .* bytes, meta.json says"):
        TokenData(broken)
    with pytest.raises(UserError, match="not a prepared-data folder"):
        ensure_prepared(tmp_path)


def _swap(chars):
    return [chars[1], chars[0], *chars[2:]]


@pytest.mark.parametrize("change, needle", [
    (lambda m: [], "expected a JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "tokenizer"}, "bad tokenizer"),
    (lambda m: {**m, "tokenizer": {**m["tokenizer"], "chars": m["tokenizer"]["chars"][:5]}}, "vocab_size"),
    (lambda m: {**m, "tokenizer": {**m["tokenizer"], "chars": _swap(m["tokenizer"]["chars"])}}, "sorted order"),
    (lambda m: {**m, "format": 2}, "unknown format 2"),
    (lambda m: {**m, "dtype": "int64"}, "dtype 'int64'"),
    (lambda m: {**m, "val_tokens": "12"}, "val_tokens must be a positive integer"),
    (lambda m: {**m, "train_tokens": 0}, "train_tokens must be a positive integer"),
])
def test_a_tampered_meta_json_is_named_before_use(prepared, tmp_path, change, needle):
    folder = tmp_path / "prep"
    shutil.copytree(prepared, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(change(meta)))
    with pytest.raises(UserError, match=f"meta.json: .*{needle}.*; prepare the corpus again"):
        TokenData(folder)


def test_the_short_corpus_error_names_the_users_file_not_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "tiny.txt"
    text.write_text("Dorothy lived in Kansas.\n")
    data = TokenData.open(text)
    assert data.folder.parent == tmp_path / "cache"
    with pytest.raises(UserError) as info:
        data.check_block_size(16)
    assert str(info.value).startswith(f"{text}: val split has") and "cache" not in str(info.value)


@pytest.fixture(scope="module")
def bpe_prepared(tmp_path_factory):
    from gptcore.prepare import prepare

    out = tmp_path_factory.mktemp("bpe") / "woz"
    prepare(CORPUS, out, progress=False, tokenizer="bpe", vocab_size=300)
    return out


def test_bpe_batches_are_windows_of_token_ids(bpe_prepared):
    data = TokenData(bpe_prepared)
    assert data.vocab_size == 300 and data.tokenizer.eos_id == 0
    x, y = data.get_batch("val", 4, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 300
    assert data.tokenizer.decode(x[0].tolist()) in data.tokenizer.decode(data.tokens("val").tolist())


def test_a_replaced_tokenizer_json_is_refused(bpe_prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bpe_prepared, copy)
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|end|>"
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match="meta.json: bad tokenizer .*tokenizer.json is not the tokenizer this data"):
        TokenData(copy)
