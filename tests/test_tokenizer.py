import json

import pytest

from gptcore.errors import UserError
from gptcore.tokenizer import CharTokenizer, load_tokenizer, tokenizer_from_dict


def test_round_trip_and_sorted_vocab(tmp_path):
    text = "Hello, Dorothy!\nThe Wizard of Oz."
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "vocab.json")
    again = CharTokenizer.load(tmp_path / "vocab.json")
    assert again.chars == tok.chars and again.encode(text) == tok.encode(text)


def test_unknown_characters_are_listed_or_dropped_when_asked():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match="2 character\\(s\\) not in the vocabulary: 'x', 'z'"):
        tok.encode("abxcz")
    assert tok.decode(tok.encode("abxcz", drop_unknown=True)) == "abc"


def test_load_rejects_bad_file(tmp_path):
    (tmp_path / "v.json").write_text('{"type": "bpe"}')
    with pytest.raises(UserError, match="v.json"):
        CharTokenizer.load(tmp_path / "v.json")


@pytest.mark.parametrize("chars, needle", [
    (["b", "a", "c"], "not distinct and in sorted order"),  # two characters swapped: ids would change meaning
    (["a", "b", "b"], "not distinct and in sorted order"),
    (["a", "bc"], "exactly one character"),
    (["a", 7], "exactly one character"),
    ([], "at least one character"),
])
def test_a_stored_vocabulary_must_be_exactly_as_saved(tmp_path, chars, needle):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"type": "char", "chars": chars}))
    with pytest.raises(UserError, match=f"vocab.json: not a valid vocabulary .*{needle}"):
        CharTokenizer.load(path)


def test_with_eos_appends_the_last_id_and_keeps_every_other():
    tok = CharTokenizer.from_text("abc")
    assert tok.eos_id is None and tok.vocab_size == 3
    eos = tok.with_eos()
    assert (eos.eos_id, eos.vocab_size) == (3, 4)
    assert eos.encode("cab") == tok.encode("cab") == [2, 0, 1]
    assert eos.decode([2, 3, 0, 3]) == "ca"  # EOS prints as nothing
    assert tok.eos_id is None  # the original is unchanged
    assert eos.with_eos().vocab_size == 4  # adding EOS twice adds it once


def test_old_vocabulary_without_eos_key_loads_unchanged_and_saves_the_same(tmp_path):
    stored = {"type": "char", "chars": ["\n", " ", "a", "b"]}
    (tmp_path / "old.json").write_text(json.dumps(stored))
    tok = load_tokenizer(tmp_path / "old.json")
    assert isinstance(tok, CharTokenizer) and tok.eos_id is None and tok.vocab_size == 4
    assert tok.to_dict() == stored  # no "eos" key added: re-saved files are byte-for-byte the old form


def test_eos_survives_save_and_load(tmp_path):
    tok = CharTokenizer.from_text("hello").with_eos()
    tok.save(tmp_path / "v.json")
    again = load_tokenizer(tmp_path / "v.json")
    assert again.eos_id == tok.eos_id == 4 and again.to_dict() == tok.to_dict() == {
        "type": "char", "chars": ["e", "h", "l", "o"], "eos": True}
    assert tokenizer_from_dict(tok.to_dict()).decode([1, 0, 2, 2, 3, 4]) == "hello"


@pytest.mark.parametrize("data, needle", [
    ({"type": "wordpiece"}, "unknown tokenizer type 'wordpiece'"),
    ([1, 2], "unknown tokenizer type None"),
    ({"type": "char", "chars": ["a"], "eos": "yes"}, "eos must be true or false"),
])
def test_tokenizer_from_dict_refuses_what_it_cannot_read(data, needle):
    with pytest.raises(ValueError, match=needle):
        tokenizer_from_dict(data)


def test_checkpoint_saves_and_loads_a_tokenizer_with_and_without_eos(tmp_path):
    from gptcore.checkpoint import load_checkpoint, save_checkpoint
    from gptcore.config import from_name
    from gptcore.model import build_model

    for name, tok in (("plain", CharTokenizer.from_text("abcd")), ("eos", CharTokenizer.from_text("abcd").with_eos())):
        m, t = from_name("tiny", device="cpu")
        m = m.with_vocab(tok.vocab_size)
        save_checkpoint(tmp_path / name, build_model(m), m, t, tok)
        loaded = load_checkpoint(tmp_path / name).tokenizer
        assert loaded.to_dict() == tok.to_dict() and loaded.eos_id == tok.eos_id
    assert json.loads((tmp_path / "plain" / "vocab.json").read_text()) == {"type": "char", "chars": list("abcd")}


def test_checkpoint_refuses_an_edited_eos_flag(tmp_path):
    from gptcore.checkpoint import load_checkpoint, save_checkpoint
    from gptcore.config import from_name
    from gptcore.model import build_model

    tok = CharTokenizer.from_text("abcd").with_eos()
    m, t = from_name("tiny", device="cpu")
    m = m.with_vocab(tok.vocab_size)
    save_checkpoint(tmp_path / "ck", build_model(m), m, t, tok)
    vocab = tmp_path / "ck" / "vocab.json"
    vocab.write_text(json.dumps({"type": "char", "chars": list("abcde")}))  # same size, EOS turned into 'e'
    with pytest.raises(UserError, match="vocab.json: not the vocabulary this checkpoint was trained with"):
        load_checkpoint(tmp_path / "ck")


def _bpe(vocab_size=300):
    from gptcore.bpe import BPETokenizer

    return BPETokenizer.train(["the wizard of oz\n", "the wicked witch of the west\n"] * 50, vocab_size)


def test_bpe_round_trips_any_text_and_reserves_eos():
    tok = _bpe()
    text = "The Wizard of Öz 🦁 <|endoftext|> and\ttabs\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.unknown(text) == []
    assert tok.eos_id == 0 and tok.eos_id not in ids  # the string in text is plain bytes, not EOS
    assert tok.decode([*tok.encode("the"), tok.eos_id]) == "the"  # EOS prints as nothing
    assert len(tok.encode("the wizard of oz")) < len("the wizard of oz")  # merges learned
    assert tok.with_eos() is tok and tok.vocab_size <= 300


def test_bpe_survives_to_dict_and_load_tokenizer(tmp_path):
    tok = _bpe()
    tok.save(tmp_path / "v.json")
    again = load_tokenizer(tmp_path / "v.json")
    assert type(again) is type(tok) and again.to_dict() == tok.to_dict() and again.eos_id == tok.eos_id
    assert again.encode("the west wind") == tok.encode("the west wind")
    with pytest.raises(UserError, match="v.json: not a valid vocabulary .*a bpe tokenizer, not char"):
        CharTokenizer.load(tmp_path / "v.json")


def test_bpe_refuses_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(ValueError, match="at least 257"):
        _bpe(256)


def test_train_then_sample_on_a_bpe_folder_end_to_end(tmp_path, capsys):
    from gptcore.__main__ import main
    from gptcore.checkpoint import load_checkpoint
    from tests.conftest import CORPUS

    assert main(["prepare", str(CORPUS), "--out", str(tmp_path / "bpe"), "--tokenizer", "bpe",
                 "--vocab-size", "300", "--no-progress"]) == 0
    assert main(["train", "--data", str(tmp_path / "bpe"), "--preset", "tiny", "--max-iters", "5",
                 "--out", str(tmp_path / "ck"), "--quiet"]) == 0
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.model_cfg.vocab_size == ckpt.tokenizer.vocab_size == 300 and ckpt.tokenizer.eos_id == 0
    assert json.loads((tmp_path / "ck" / "vocab.json").read_text())["type"] == "bpe"
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "ck"), "--prompt", "Dorothy", "--max-new-tokens", "8",
                 "--seed", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Dorothy") and len(out) > len("Dorothy\n")
    (tmp_path / "ck" / "vocab.json").write_text(json.dumps({**ckpt.tokenizer.to_dict(), "type": "bpe"}) + " ")
    assert load_checkpoint(tmp_path / "ck").step == 5  # whitespace only: the same tokenizer, still accepted


def test_added_characters_and_eos_go_after_every_existing_id_and_survive_a_round_trip():
    from gptcore.tokenizer import CharTokenizer, tokenizer_from_dict

    base = CharTokenizer("abc")
    grown = base.with_eos().with_chars("z\u00e9a")  # 'a' is known: only the new ones are added, in order
    assert grown.encode("abc") == base.encode("abc") and grown.eos_id == 3 and grown.encode("z\u00e9") == [4, 5]
    assert grown.decode([0, 3, 5]) == "a\u00e9"  # EOS prints as nothing
    again = tokenizer_from_dict(grown.to_dict())
    stored = {"type": "char", "chars": ["a", "b", "c"], "tail": [None, "z", "\u00e9"]}
    assert again.to_dict() == grown.to_dict() == stored
    assert base.with_chars("z").with_eos().eos_id == 4  # EOS after the added character when added later
    with pytest.raises(ValueError, match="added entries"):
        tokenizer_from_dict({"type": "char", "chars": ["a"], "tail": ["a"]})
