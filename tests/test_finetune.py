"""Fine-tuning on prompt/completion pairs: the file, the loss mask, the grown vocabulary, the command."""

import json

import pytest
import torch

from gptcore.config import ModelConfig
from gptcore.errors import UserError
from gptcore.model import GPT, BigramLanguageModel, grow_vocab
from gptcore.pairs import IGNORE, Example, Pair, collate, completion_loss, encode_pairs, read_pairs, split_pairs
from gptcore.sample import chat, sample_text
from gptcore.tokenizer import CharTokenizer
from tests.test_cli import TINY, call, checkpoint  # noqa: F401 (checkpoint: the tiny trained model fixture)

CFG = ModelConfig(vocab_size=20, block_size=16, n_embed=16, n_head=2, n_layer=1, dropout=0.0)


def write_pairs(path, lines):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("line, needle", [
    ("not json", "line 2: not JSON"),
    ('["a list"]', "line 2: expected a JSON object"),
    ('{"prompt": "a"}', 'line 2: missing "completion"'),
    ('{"completion": "a"}', 'line 2: missing "prompt"'),
    ('{"prompt": "a", "completion": ""}', 'line 2: empty "completion"'),
    ('{"prompt": 3, "completion": "a"}', '"prompt" must be a string'),
])
def test_bad_lines_name_the_line(tmp_path, line, needle):
    path = write_pairs(tmp_path / "p.jsonl", [{"prompt": "q", "completion": "a"}, line])
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        read_pairs(path)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    lines = [{"prompt": "q", "completion": "a"}, "", {"prompt": "", "completion": "b"}]
    path = write_pairs(tmp_path / "p.jsonl", lines)
    assert read_pairs(path) == [Pair("q", "a", 1), Pair("", "b", 3)]


def test_split_is_deterministic_disjoint_and_complete():
    pairs = [Pair(str(i), "x", i + 1) for i in range(50)]
    train, val = split_pairs(pairs, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40 and set(train).isdisjoint(val) and set(train) | set(val) == set(pairs)
    assert split_pairs(pairs, 0.2, seed=1) == (train, val)
    assert split_pairs(pairs, 0.2, seed=2)[1] != val
    assert len(split_pairs(pairs[:2], 0.01, seed=0)[1]) == 1  # at least one pair each side


def test_targets_count_only_the_completion_and_eos():
    tok = CharTokenizer("abcxyz").with_eos()
    long, short = encode_pairs([Pair("ab", "xyz", 1), Pair("c", "x", 2)], tok, tok.eos_id, block_size=8)
    x, y = collate([long, short])
    eos = tok.eos_id
    a, b, c, xx, yy, z = (tok.encode(ch)[0] for ch in "abcxyz")
    assert x.tolist() == [[a, b, xx, yy, z], [c, xx, 0, 0, 0]]  # right-padded to the longest
    # Position t predicts token t+1: "ab" predicts nothing counted; the prompt's last char predicts "x".
    assert y.tolist() == [[IGNORE, xx, yy, z, eos], [xx, eos, IGNORE, IGNORE, IGNORE]]


def test_an_empty_prompt_makes_the_first_completion_token_context():
    tok = CharTokenizer("ab").with_eos()
    (ex,) = encode_pairs([Pair("", "ab", 1)], tok, tok.eos_id, block_size=8)
    _, y = collate([ex])
    assert y.tolist() == [[tok.encode("b")[0], tok.eos_id]]


def test_pairs_longer_than_the_context_are_refused_by_line():
    tok = CharTokenizer("ab").with_eos()
    needle = r"1 pair\(s\) longer than the model's context of 5 tokens .*line \(tokens\): 2 \(6\)"
    with pytest.raises(UserError, match=needle):
        encode_pairs([Pair("a", "b", 1), Pair("aaa", "bb", 2)], tok, tok.eos_id, block_size=4)


def test_padding_does_not_change_a_rows_loss():
    """Right padding: the causal model never lets a real token see padding, so batching leaves the loss alone."""
    torch.manual_seed(0)
    model = GPT(CFG)
    short, long = Example([1, 2, 3], 1), Example([4, 5, 6, 7, 8, 9, 10], 2)
    alone = completion_loss(model, [short], 1)
    both = completion_loss(model, [short, long], 2)
    assert both == pytest.approx((alone * 2 + completion_loss(model, [long], 1) * 5) / 7, rel=1e-5)


@pytest.mark.parametrize("cls", [GPT, BigramLanguageModel])
def test_grow_vocab_keeps_old_rows_and_adds_mean_rows(cls):
    torch.manual_seed(0)
    model = cls(CFG).eval()
    x = torch.randint(20, (2, 8))
    before, _ = model(x)
    old_emb = model.token_embedding_table.weight.clone()
    grow_vocab(model, 22)
    after, _ = model(x)
    assert after.shape[-1] == 22 and model.config.vocab_size == 22
    assert torch.allclose(after[..., :20], before, atol=1e-6)  # every old token's logit is untouched
    assert torch.allclose(model.token_embedding_table.weight[20, :old_emb.shape[1]], old_emb.mean(dim=0))
    assert model(torch.tensor([[21, 20]]))[0].shape == (1, 2, 22)
    with pytest.raises(ValueError, match="shrink"):
        grow_vocab(model, 10)


def test_sample_and_chat_stop_at_eos_and_never_show_it():
    torch.manual_seed(0)
    tok = CharTokenizer("abc").with_eos()
    model = GPT(ModelConfig(**{**CFG.__dict__, "vocab_size": tok.vocab_size}))
    with torch.no_grad():  # "b" first, then EOS: the bias decides while the weights are tiny
        model.lm_head.bias.zero_()
        model.lm_head.bias[tok.eos_id] = 50.0
    assert sample_text(model, tok, "a", max_new_tokens=20, temperature=0) == ""
    inputs, written = iter(["ab", "c"]), []

    def read(_):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    assert chat(model, tok, read=read, write=written.append, max_new_tokens=20, temperature=0) == 2
    assert written[1:] == ["ab", "c", ""]  # each answer ends at EOS and the loop asks again


def make_pairs_file(path, n=40):
    """Pairs a tiny model can learn in a few dozen steps: a name, then always the same answer."""
    names = ["Dorothy", "Zeb", "Jim", "Eureka", "Ozma"]
    return write_pairs(path, [{"prompt": f"{names[i % 5]}:", "completion": " yes"} for i in range(n)])


def test_finetune_lowers_the_held_out_loss_and_stops_at_eos(checkpoint, capsys, tmp_path):  # noqa: F811
    from gptcore.checkpoint import load_checkpoint

    data = make_pairs_file(tmp_path / "p.jsonl")
    out = tmp_path / "ft"
    code, stdout, err = call(["finetune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                              "--max-iters", "60", "--learning-rate", "3e-3", "--eval-interval", "30",
                              "--device", "cpu", "--max-new-tokens", "10"], capsys)
    assert code == 0, err
    assert "36 train, 4 validation" in stdout and "added '<eos>'" in stdout
    before, after = (float(v) for v in
                     stdout.split("held-out pairs (completion + EOS tokens) ")[1].split(" after")[0].split(" before, "))
    assert after < before / 2
    assert "100% of greedy answers stop at EOS within 10 tokens" in stdout
    ckpt = load_checkpoint(out, with_optimizer=False)
    assert ckpt.tokenizer.eos_id is not None and ckpt.model_cfg.vocab_size == ckpt.tokenizer.vocab_size
    code, stdout, _ = call(["sample", "--checkpoint", str(out), "--prompt", "Zeb:", "--temperature", "0",
                            "--max-new-tokens", "10"], capsys)
    assert code == 0 and stdout == "Zeb: yes\n"


@pytest.mark.parametrize("lines, extra, needle", [
    (["{not json"], [], "line 1: not JSON"),
    ([{"prompt": "a"}], [], 'line 1: missing "completion"'),
    ([{"prompt": "a", "completion": ""}], [], 'line 1: empty "completion"'),
    ([{"prompt": "a", "completion": "\u00e9\u00df"}, {"prompt": "a", "completion": "b"}], [],
     "2 character(s) not in the checkpoint's vocabulary: '\u00df', '\u00e9'"),
    ([{"prompt": "a", "completion": "b"}], ["--n-layer", "3"], "--n-layer: the model comes from --checkpoint"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b"}], ["--max-seconds", "5"],
     "--max-seconds: fine-tuning runs a step budget"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(checkpoint, capsys, tmp_path, lines, extra, needle):  # noqa: F811
    data = write_pairs(tmp_path / "p.jsonl", lines)
    out = tmp_path / "ft"
    code, _, err = call(["finetune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                         "--device", "cpu", *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bad_checkpoint_and_unwritable_out(checkpoint, capsys, tmp_path):  # noqa: F811
    data = make_pairs_file(tmp_path / "p.jsonl")
    code, _, err = call(["finetune", "--checkpoint", str(tmp_path), "--data", str(data), "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and "state.json: missing; not a complete checkpoint" in err and not (tmp_path / "o").exists()
    blocker = tmp_path / "f"
    blocker.write_text("")  # a file where the output's parent folder should be: unwritable even as root
    code, _, err = call(["finetune", "--checkpoint", str(checkpoint), "--data", str(data), "--out",
                         str(blocker / "o")], capsys)
    assert code == 2 and "f is a file, not a folder; cannot create the checkpoint there" in err


def test_extend_vocab_appends_the_new_characters_and_keeps_every_old_id(checkpoint, capsys, tmp_path):  # noqa: F811
    from gptcore.checkpoint import load_checkpoint

    base = load_checkpoint(checkpoint, with_optimizer=False).tokenizer
    data = write_pairs(tmp_path / "p.jsonl", [{"prompt": f"{n}:", "completion": " \u00e9t\u00e9"}
                                              for n in ("Zeb", "Jim", "Ozma", "Dorothy") * 5])
    out = tmp_path / "ft"
    code, stdout, err = call(["finetune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                              "--max-iters", "40", "--learning-rate", "3e-3", "--device", "cpu", "--extend-vocab",
                              "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    tok = load_checkpoint(out, with_optimizer=False).tokenizer
    # The old characters keep their ids; the new one and EOS come after them, and the model has a row for each.
    assert tok.encode("Zeb:") == base.encode("Zeb:") and tok.vocab_size == base.vocab_size + 2
    assert tok.encode("\u00e9")[0] >= base.vocab_size and tok.eos_id >= base.vocab_size
    code, stdout, _ = call(["sample", "--checkpoint", str(out), "--prompt", "Zeb:", "--temperature", "0",
                            "--max-new-tokens", "8"], capsys)
    assert code == 0 and stdout.startswith("Zeb:")
