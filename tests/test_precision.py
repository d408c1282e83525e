"""Lower-precision inference: casting, int8 quantisation (torchao), the weights' size, and refusals."""

import sys

import pytest
import torch
from torch import nn

from gptcore import precision as P
from gptcore.__main__ import main
from gptcore.cliutil import run
from gptcore.config import from_name
from gptcore.errors import UserError
from gptcore.model import build_model
from gptcore.sample import sample_text
from gptcore.tokenizer import CharTokenizer
from tests.conftest import CORPUS

TOKENIZER = CharTokenizer.from_text(CORPUS.read_text(encoding="utf-8"))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m, _ = from_name("tiny")
    return build_model(m.with_vocab(TOKENIZER.vocab_size)).eval()


def float32_bytes(model: nn.Module) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values())


def call(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m gptcore")
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("precision, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_casting_halves_the_weights_and_sampling_still_works(precision, dtype):
    model = tiny_model()
    full = P.weights_bytes(model)
    assert full == float32_bytes(model)
    model = P.at_precision(model, precision, "cpu")
    assert all(p.dtype == dtype for p in model.parameters())
    assert P.weights_bytes(model) == full // 2
    text = sample_text(model, TOKENIZER, "Dorothy", max_new_tokens=25, seed=3)
    assert len(text) == 25 and not TOKENIZER.unknown(text)


def test_int8_quantises_every_linear_and_counts_int8_data_plus_scales():
    model = tiny_model()
    full = P.weights_bytes(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n_weights = sum(m.weight.numel() for m in linears)
    float_logits = model(torch.tensor([TOKENIZER.encode("Dorothy")]))[0]
    model = P.at_precision(model, "int8", "cpu")
    scales = 0
    for m in linears:
        qdata = m.weight.qdata
        assert qdata.dtype == torch.int8 and qdata.shape == m.weight.shape
        for per_row in (m.weight.scale, getattr(m.weight, "zero_point", None)):  # torchao stores zero points too
            scales += 0 if per_row is None else per_row.numel() * per_row.element_size()
    # Each Linear weight: 4 bytes per element -> 1, plus its per-row scales (and zero points); embeddings, norms
    # and biases unchanged.
    assert P.weights_bytes(model) == full - 3 * n_weights + scales < full
    logits = model(torch.tensor([TOKENIZER.encode("Dorothy")]))[0]
    assert torch.allclose(logits, float_logits, atol=0.05)  # per-row int8 of N(0, 0.02) weights: close
    text = sample_text(model, TOKENIZER, "Dorothy", max_new_tokens=25, seed=3)
    assert len(text) == 25 and not TOKENIZER.unknown(text)


def test_weights_bytes_counts_a_shared_storage_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as GPT-2 ties its head to the token embedding
    assert P.weights_bytes(model) == 10 * 4 * 4


def test_a_precision_the_device_cannot_run_is_one_line_and_exit_2_before_the_checkpoint(capsys, monkeypatch,
                                                                                        tmp_path):
    def unsupported(precision, device):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'\nmore detail')

    monkeypatch.setattr(P, "_probe", unsupported)
    code, out, err = call(["sample", "--checkpoint", str(tmp_path / "none"), "--precision", "float16",
                           "--device", "cpu"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--precision float16: not supported on this cpu device (\"addmm_impl_cpu_\" not implemented" in err
    assert not (tmp_path / "none").exists()


def test_int8_without_torchao_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchao", None)  # None in sys.modules: the import raises ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(UserError, match=r"needs torchao, which is not installed: pip install 'gptcore-tune\[quant\]'"):
        P.check_precision("int8", "cpu")
    code, _, err = call(["chat", "--checkpoint", str(tmp_path), "--precision", "int8"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install" in err


@pytest.mark.parametrize("command", ["sample", "chat"])
def test_unknown_precision_is_refused_by_its_choices(command, capsys):
    code, _, err = call([command, "--precision", "int4"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --precision: invalid choice: 'int4'" in err


def test_sample_at_each_precision_from_a_checkpoint(capsys, tmp_path):
    ck = tmp_path / "ck"
    code, _, _ = call(["train", "--data", str(CORPUS), "--out", str(ck), "--preset", "tiny", "--max-iters", "10",
                       "--device", "cpu", "--no-progress", "-q"], capsys)
    assert code == 0
    for precision in P.PRECISIONS:
        code, out, _ = call(["sample", "--checkpoint", str(ck), "--prompt", "Dorothy", "--max-new-tokens", "12",
                             "--seed", "1", "--precision", precision], capsys)
        assert code == 0 and out.startswith("Dorothy") and len(out) == len("Dorothy") + 12 + 1, (precision, out)
