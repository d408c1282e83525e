import json

import pytest

from gptcore.errors import UserError
from gptcore.tokenizer import CharTokenizer


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
