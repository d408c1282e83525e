"""--model: the user's own model class, tuned, trained and sampled like gptcore's GPT (gptcore.usermodel,
docs/your-model.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.config import ModelConfig, TrainConfig, from_dict, to_dict
from gptcore.errors import UserError
from gptcore.usermodel import build_model, probe, same_model
from tests.conftest import CORPUS, ROOT, cuda, run_cli
from tune.core.budget import Budget
from tune.search.settings import TuneSettings
from tune.search.study import run_study

COURSE = f"{ROOT / 'examples' / 'course_gpt.py'}:GPTLanguageModel"

# A small model of the protocol's every part: a declared field (mlp_ratio), flops_per_token, and a generate that
# takes gptcore's keywords. Each bad class below is this one with one thing broken.
TINY = '''
import torch
import torch.nn as nn
from torch.nn import functional as F


class Tiny(nn.Module):
    config_fields = {"mlp_ratio": 2}

    def __init__(self, config):
        super().__init__()
        width = config.mlp_ratio * config.n_embed
        self.emb = nn.Embedding(config.vocab_size, config.n_embed)
        self.pos = nn.Embedding(config.block_size, config.n_embed)
        self.mlp = nn.Sequential(nn.Linear(config.n_embed, width), nn.ReLU(), nn.Linear(width, config.n_embed),
                                 nn.Dropout(config.dropout))
        self.head = nn.Linear(config.n_embed, config.vocab_size)

    def forward(self, idx, targets=None):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        logits = self.head(x + self.mlp(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def flops_per_token(self, T):
        return 6.0 * sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, eos_id=None, generator=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.pos.num_embeddings:])
            idx = torch.cat([idx, logits[:, -1:].argmax(-1)], dim=1)
        return idx
'''
FORWARD = "    def forward(self, idx, targets=None):\n"
BAD = {  # name: (change to TINY, what the one line says)
    "syntax error": (lambda s: s.replace("def forward(self, idx, targets=None):", "def forward(self, idx,:"),
                     "syntax error at tiny.py:"),
    "wrong forward signature": (lambda s: s.replace(FORWARD, "    def forward(self, idx):\n        targets = None\n"),
                                "needs forward(self, idx, targets=None)"),
    "loss not a scalar": (lambda s: s.replace("targets.view(-1))", "targets.view(-1), reduction='none')"),
                          "must return the loss as a scalar tensor"),
    "model raises": (lambda s: s.replace("        width = ",
                                         "        raise RuntimeError('no GPU here')\n        width = "),
                     "building it raised RuntimeError: no GPU here (at tiny.py:"),
    "forward raises": (lambda s: s.replace(FORWARD, FORWARD + "        raise ValueError('bad shape')\n"),
                       "forward(idx, targets) raised ValueError: bad shape (at tiny.py:"),
    "loss is not finite": (lambda s: s.replace("targets.view(-1))", "targets.view(-1)) * float('nan')"),
                           "not a finite number"),
    "forward returns logits only": (lambda s: s.replace("return logits, loss", "return logits"),
                                    "forward must return a pair (logits, loss)"),
    "no parameters get gradients": (lambda s: s.replace("return logits, loss", "return logits.detach(), "
                                                        "None if loss is None else loss.detach() + "
                                                        "torch.zeros((), requires_grad=True)"),
                                    "no parameter received a gradient"),
}


def write_model(folder: Path, source: str = TINY) -> str:
    (folder / "tiny.py").write_text(source)
    return f"{folder / 'tiny.py'}:Tiny"


# --- the class, in process --------------------------------------------------------------------------------


def test_probe_reports_declared_fields_flops_and_which_generate(tmp_path):
    tiny = probe(write_model(tmp_path))
    assert tiny["fields"] == {"mlp_ratio": 2} and tiny["flops_per_token"] and tiny["generate"] == "own"
    course = probe(COURSE)  # the course's generate takes no temperature: gptcore's loop samples
    assert course["fields"] == {} and not course["flops_per_token"] and course["generate"] == "gptcore"


def test_declared_fields_take_the_configs_extra_values_and_refuse_undeclared_ones(tmp_path):
    spec = write_model(tmp_path)
    cfg = ModelConfig(vocab_size=11, block_size=8, n_embed=16, n_head=2, n_layer=1, model=spec)
    assert build_model(cfg).mlp[0].out_features == 2 * 16  # the declared default
    assert build_model(ModelConfig(**{**to_dict(cfg, TrainConfig())["model"], "extra": {"mlp_ratio": 3}})
                       ).mlp[0].out_features == 3 * 16
    with pytest.raises(UserError, match="sets width, which the class does not declare"):
        build_model(ModelConfig(**{**to_dict(cfg, TrainConfig())["model"], "extra": {"width": 3}}))


def test_model_and_extra_round_trip_and_old_configs_load_unchanged():
    cfg = ModelConfig(vocab_size=11, model="my_gpt.py:GPT", extra={"mlp_ratio": 3})
    data = json.loads(json.dumps(to_dict(cfg, TrainConfig())))
    assert from_dict(data)[0] == cfg and from_dict(data)[0] != ModelConfig(vocab_size=11, model="my_gpt.py:GPT")
    old = {k: v for k, v in data["model"].items() if k not in ("model", "extra")}
    assert from_dict({"model": old, "train": {}})[0] == ModelConfig(vocab_size=11)  # a config from before --model
    assert from_dict({"model": "my_gpt.py:GPT"})[0].model == "my_gpt.py:GPT"  # a flat config of that field alone
    for bad in ("my_gpt.py", "my_gpt.py:", "my-pkg:GPT"):
        with pytest.raises(ValueError, match="model"):
            ModelConfig(model=bad)


def test_a_file_is_the_same_model_by_its_path_and_class(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_model(tmp_path)
    assert same_model("tiny.py:Tiny", spec) and same_model("./tiny.py:Tiny", spec)
    assert not same_model("tiny.py:Other", spec) and not same_model("", spec) and not same_model(spec, "")


def test_a_module_spec_imports_the_module(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "model.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert probe("mypkg.model:Tiny")["fields"] == {"mlp_ratio": 2}
    with pytest.raises(UserError, match="no module named nosuchpkg"):
        probe("nosuchpkg.model:Tiny")


# --- bad classes: one line, exit 2, nothing created ------------------------------------------------------


@pytest.mark.parametrize("case", [*BAD, "missing file", "missing class"])
def test_a_bad_class_stops_the_study_in_one_line_before_anything_is_created(case, tmp_path, capfd):
    models = tmp_path / "models"
    models.mkdir()
    spec = write_model(models, BAD[case][0](TINY) if case in BAD else TINY)
    if case == "missing file":
        spec, expected = f"{models / 'nothere.py'}:Tiny", "nothere.py: no such file"
    elif case == "missing class":
        spec, expected = f"{models / 'tiny.py'}:Small", "tiny.py has no class Small"
    else:
        expected = BAD[case][1]
    code, _, err = run_cli("tune", ["--model", spec, "--trials", "1", "--budget", "5steps", "--device", "cpu",
                                    "--results", str(tmp_path / "results"), "--data", str(CORPUS)], capfd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"python -m tune: error: --model {spec}: ") and expected in lines[0], err
    assert not (tmp_path / "results").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_gptcore_train_refuses_a_bad_class_before_any_work(tmp_path, capfd):
    spec = write_model(tmp_path, BAD["loss not a scalar"][0](TINY))
    code, _, err = run_cli("gptcore", ["train", "--model", spec, "--preset", "tiny", "--out", str(tmp_path / "out"),
                                       "--data", str(CORPUS)], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "must return the loss as a scalar tensor" in err
    assert not (tmp_path / "out").exists()


# --- the checkpoint never runs a model file the user did not name ----------------------------------------


def test_a_checkpoint_runs_its_model_file_only_when_model_names_it(tmp_path):
    marker = tmp_path / "imported"
    # The model file leaves a mark each time it is imported: the refused commands must leave none.
    spec = write_model(tmp_path, f"from pathlib import Path\nPath({str(marker)!r}).touch()\n" + TINY)
    from gptcore.data import TokenData

    data = TokenData.open(CORPUS, progress=False)
    cfg = ModelConfig(vocab_size=data.vocab_size, block_size=8, n_embed=16, n_head=2, n_layer=1, model=spec)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, build_model(cfg), cfg, TrainConfig(), data.tokenizer)
    marker.unlink()
    with pytest.raises(UserError, match=f"whose code runs only when you name it: pass --model {spec}"):
        load_checkpoint(ckpt)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sample = [sys.executable, "-m", "gptcore", "sample", "--checkpoint", str(ckpt), "--max-new-tokens", "5"]
    refused = subprocess.run(sample, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not marker.exists()  # the file was never imported
    named = subprocess.run([*sample, "--model", spec], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert named.returncode == 0 and marker.exists(), named.stderr
    with pytest.raises(UserError, match="works on gptcore's GPT only"):  # finetune: gptcore's layers only
        load_checkpoint(ckpt, model=spec, user_models=False)
    with pytest.raises(UserError, match="holds gptcore's own GPT"):  # and never another class than it holds
        gpt = tmp_path / "gpt"
        plain = ModelConfig(vocab_size=data.vocab_size, block_size=8, n_embed=16, n_head=2, n_layer=1)
        save_checkpoint(gpt, build_model(plain), plain, TrainConfig(), data.tokenizer)
        load_checkpoint(gpt, model=spec)


# --- the course's GPT tuned through --model, trained again from best.json, sampled --------------------------


@pytest.fixture(scope="module")
def course_study(tmp_path_factory):
    """A 2-trial study of examples/course_gpt.py with one reference, on a step budget, under a memory limit (so
    that every run traces the course's class: without a limit on the CPU no step is traced)."""
    tmp = tmp_path_factory.mktemp("course")
    space = {"batch_size": [2, 4], "block_size": [8, 16], "n_embed": [64, 64], "n_head": [1, 2], "n_layer": [1, 1],
             "learning_rate": [1e-3, 1e-2]}
    settings = TuneSettings.of(model=COURSE, trials=2, budget=Budget(20, "steps"), references=("tiny",),
                               data=CORPUS, device="cpu", results=tmp / "results", study_name="course",
                               space_overrides=space, progress=False, seed=1, confirm=0, memory_limit=8 * 2**30)
    return run_study(settings)


def test_the_course_gpt_is_tuned_through_model(course_study):
    import pandas as pd

    folder = course_study.results_dir
    df = pd.read_csv(folder / "trials.csv")
    assert len(df) == 3 and set(df["status"]) == {"ok"}  # 2 trials and the reference, the course's class each
    assert course_study.study.user_attrs["model"]["class"] == "GPTLanguageModel"
    for row in df.itertuples():
        assert json.loads(row.config)["model"]["model"] == COURSE
        assert row.traced_MiB > 0 and pd.isna(row.trace_error)  # the memory tracer built the course's class
    best = json.loads((folder / "best.json").read_text())
    assert best["model"]["model"] == COURSE
    summary = (folder / "summary.md").read_text()  # its commands name the class, which runs only when named
    assert f"--config {folder / 'best.json'} --model {COURSE}`" in summary
    assert f"--checkpoint {folder / 'best-model'} --model {COURSE}`" in summary
    # The reference trained the course's class at the tiny preset's shape.
    ref = df[df["reference"] == "tiny"].iloc[0]
    assert ref["n_embed"] == 32 and json.loads(ref["config"])["model"]["model"] == COURSE


def test_best_json_trains_again_and_the_best_model_samples(course_study, tmp_path, capfd):
    folder = course_study.results_dir
    config = str(folder / "best.json")
    code, _, err = run_cli("gptcore", ["train", "--config", config, "--out", str(tmp_path / "m"),
                                       "--data", str(CORPUS), "--no-progress"], capfd)
    assert code == 2 and f"pass --model {COURSE}" in err and not (tmp_path / "m").exists()
    code, out, err = run_cli("gptcore", ["train", "--config", config, "--model", COURSE, "--out",
                                         str(tmp_path / "m"), "--data", str(CORPUS), "--no-progress"], capfd)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["model"] == COURSE
    code, out, err = run_cli("gptcore", ["sample", "--checkpoint", str(folder / "best-model"), "--model", COURSE,
                                         "--max-new-tokens", "30", "--seed", "0"], capfd)
    assert code == 0 and len(out.rstrip("\n")) > 0, err


def test_compare_names_the_model_class_each_study_tuned(course_study, tmp_path, capfd):
    folder = str(course_study.results_dir)
    code, _, err = run_cli("tune", ["compare", folder, folder, "--out", str(tmp_path / "cmp"), "-q"], capfd)
    assert code == 0, err
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"| model | `{COURSE}` | `{COURSE}` |" in text


def test_a_study_resumed_with_another_model_is_refused(course_study, capfd):
    s = course_study.study.user_attrs["settings"]
    assert s["model"] == COURSE
    code, _, err = run_cli("tune", ["--trials", "2", "--budget", "20steps", "--device", "cpu", "--data", str(CORPUS),
                                    "--results", str(course_study.results_dir.parent), "--study-name", "course"],
                           capfd)
    assert code == 2 and f"model: {COURSE!r} -> ''" in err, err


@cuda
def test_mfu_comes_from_flops_per_token_only(tmp_path):
    from gptcore.data import TokenData
    from gptcore.train import train

    data = TokenData.open(CORPUS, progress=False)
    with_flops = write_model(tmp_path)
    (tmp_path / "plain.py").write_text(TINY.replace("def flops_per_token", "def _flops"))
    train_cfg = TrainConfig(batch_size=4, max_iters=60, eval_interval=60, eval_iters=2, device="cuda", compile="none")
    for spec, has in ((with_flops, True), (f"{tmp_path / 'plain.py'}:Tiny", False)):
        cfg = ModelConfig(vocab_size=data.vocab_size, block_size=16, n_embed=32, n_head=2, n_layer=1, model=spec)
        result = train(cfg, train_cfg, data, progress=False)
        assert (result.mfu is not None) == has and (not has or result.mfu > 0)


def test_a_study_from_before_model_resumes_only_as_gptcores_gpt():
    import optuna

    from tune.store.storage import check_fingerprint

    study = optuna.create_study()
    study.set_user_attr("fingerprint", {"device_name": "cpu"})  # recorded before --model existed
    check_fingerprint(study, {"device_name": "cpu", "model": ""})
    with pytest.raises(UserError, match="model: '' -> 'my_gpt.py:GPT'"):
        check_fingerprint(study, {"device_name": "cpu", "model": "my_gpt.py:GPT"})


def test_a_declared_field_is_searched_and_reaches_the_trial(tmp_path, capfd):
    spec = write_model(tmp_path)
    code, _, err = run_cli("tune", ["--model", spec, "--param", "mlp_ratio=1,4", "--trials", "2", "--budget",
                                    "5steps", "--device", "cpu", "--references", "none", "--confirm", "0",
                                    "--results", str(tmp_path / "results"), "--study-name", "s", "--data",
                                    str(CORPUS), "--n-embed", "64,64", "--block-size", "8,16"], capfd)
    assert code == 0, err
    logs = sorted((tmp_path / "results" / "s" / "logs").glob("trial_*.log"))
    drawn = [json.loads(log.read_text().splitlines()[0].removeprefix("model "))["extra"]["mlp_ratio"] for log in logs]
    assert len(drawn) == 2 and all(1 <= v <= 4 for v in drawn)
    code, _, err = run_cli("tune", ["--model", spec, "--param", "width=1,4", "--trials", "1", "--device", "cpu",
                                    "--results", str(tmp_path / "other"), "--data", str(CORPUS)], capfd)
    assert code == 2 and "width" in err and not (tmp_path / "other").exists()
