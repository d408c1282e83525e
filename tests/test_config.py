import dataclasses
import json
import math

import pytest

from gptcore import config as C


def test_presets_build_and_baby_matches_spec():
    for name in C.PRESETS:
        C.from_name(name)
    m, t = C.from_name("baby")
    assert (m.n_layer, m.n_head, m.n_embed, m.block_size, t.batch_size) == (4, 4, 128, 64, 12)


def test_overrides_apply_and_unknown_field_is_named():
    m, t = C.from_name("tiny", n_layer=3, learning_rate=0.5)
    assert m.n_layer == 3 and t.learning_rate == 0.5
    with pytest.raises(ValueError, match="n_layers"):
        C.from_name("tiny", n_layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        C.from_name("huge")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(n_embed=30, n_head=4), "n_embed must be divisible by n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer, got 0"),
        (dict(block_size=-1), "block_size"),
        (dict(dropout=1.0), "dropout must be in \\[0, 1\\), got 1.0"),
        (dict(dropout=-0.1), "dropout"),
        (dict(norm="middle"), "norm must be one of post, pre"),
        (dict(activation="tanh"), "activation"),
    ],
)
def test_model_config_rejects(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        C.ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(learning_rate=0), "learning_rate must be a positive number, got 0"),
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_iters=None, max_seconds=None), "set a budget"),
        (dict(max_seconds=-1), "max_seconds"),
        (dict(dtype="float8"), "dtype must be one of"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eval_iters=0), "eval_iters"),
    ],
)
def test_train_config_rejects(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        C.TrainConfig(**kwargs)


def test_configs_are_frozen_and_derive_values():
    m = C.ModelConfig(n_embed=128, n_head=4)
    assert m.head_size == 32
    with pytest.raises(AttributeError):
        m.n_layer = 9
    assert C.TrainConfig(batch_size=8, grad_accum_steps=3).effective_batch_size == 24


def test_json_round_trip(tmp_path):
    m, t = C.from_name("course", vocab_size=65, betas=(0.8, 0.95), max_seconds=12.5)
    text = json.dumps(C.to_dict(m, t))
    assert C.from_dict(json.loads(text)) == (m, t)
    path = tmp_path / "cfg.json"
    path.write_text(text)
    assert C.from_dict(C.load_json(path)) == (m, t)


def test_load_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        C.load_json(bad)
    bad.write_text(json.dumps({"n_head": 3, "n_embed": 64}))
    with pytest.raises(ValueError, match="bad.json: n_embed must be divisible"):
        C.load_json(bad)
    with pytest.raises(ValueError, match="not found"):
        C.load_json(tmp_path / "missing.json")


FLOAT_FIELDS = [(cls, f.name) for cls in (C.ModelConfig, C.TrainConfig) for f in dataclasses.fields(cls)
                if "float" in f.type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("cls, name", FLOAT_FIELDS, ids=[name for _, name in FLOAT_FIELDS])
def test_every_float_field_refuses_nan_and_inf(cls, name, bad):
    value = (0.9, bad) if name == "betas" else bad
    with pytest.raises(ValueError, match=f"{name} must be .*finite"):
        cls(**{name: value})


def test_float_fields_are_found_and_refuse_bools():
    assert {name for _, name in FLOAT_FIELDS} == {"dropout", "learning_rate", "weight_decay", "betas", "grad_clip",
                                                   "max_seconds"}
    with pytest.raises(ValueError, match="grad_clip"):
        C.TrainConfig(grad_clip=True)


def test_seed_range_is_what_torch_and_numpy_take():
    import numpy as np
    import torch

    assert C.TrainConfig(seed=0).seed == 0 and C.TrainConfig(seed=C.SEED_MAX).seed == C.SEED_MAX
    for bad in (-1, C.SEED_MAX + 1, 10**23, 1.0, True, "1"):
        with pytest.raises(ValueError, match="seed must be an integer from 0 to"):
            C.TrainConfig(seed=bad)
    # The largest seed works where seeds go: torch (training adds an offset to it) and NumPy's RandomState,
    # which Optuna's samplers seed; one more is already too many for NumPy.
    torch.Generator().manual_seed(C.SEED_MAX + 7919)
    np.random.RandomState(C.SEED_MAX)
    with pytest.raises(ValueError):
        np.random.RandomState(C.SEED_MAX + 1)


def test_integers_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        C.TrainConfig(batch_size=2**63)
    with pytest.raises(ValueError, match="warmup_iters"):
        C.TrainConfig(warmup_iters=2**63)


def test_a_nan_in_a_config_file_is_named_with_the_file(tmp_path):
    path = tmp_path / "best.json"
    path.write_text('{"train": {"weight_decay": NaN}}')  # Python's json reads NaN, so a file can hold one
    with pytest.raises(ValueError, match="best.json: weight_decay must be a finite number, got nan"):
        C.load_json(path)


def test_a_provenance_block_is_ignored_but_must_be_an_object(tmp_path):
    m, t = C.from_name("tiny")
    data = {**C.to_dict(m, t), "provenance": {"study": "s", "trial": 3}}
    assert C.from_dict(data) == (m, t)
    f = tmp_path / "best.json"
    f.write_text(json.dumps(data))
    assert "provenance" not in C.load_json(f) and C.load_json(f)["n_layer"] == m.n_layer
    with pytest.raises(ValueError, match="provenance"):
        C.from_dict({**C.to_dict(m, t), "provenance": "tuner"})
