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
