"""The bad-input table: every input the three command lines refuse, refused the same clean way.

Each case runs the real CLI's entry point (`python -m gptcore|tune|benchmarks ...`: its main() through
gptcore.cliutil.run, as the console command does) in this process, in a folder of its own, and must: exit with
code 2; print exactly one line on stderr (file descriptor 2, so a trial process's output counts too), and that
line names the flag, field or file at fault; raise no exception other than that exit; and leave no file or folder
behind (neither in its folder nor in the shared inputs). One case per CLI also runs as a real
`python -m ...` process: the console path, the interpreter's exit code and a traceback-free stderr end to end.
In-process, a case costs milliseconds instead of an interpreter and torch import (a second or more on 2 cores).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import CORPUS, ROOT

DELETE = object()  # a `tampered` change that removes the file


def files(contents: dict[str, str | bytes | None]) -> Callable[[Path, dict[str, Path]], None]:
    """Set-up: write these files (path -> text or bytes; a path ending in / is a folder) into the case's folder."""

    def setup(cwd: Path, inputs: dict[str, Path]) -> None:
        for name, content in contents.items():
            path = cwd / name
            if name.endswith("/"):
                path.mkdir(parents=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content or "", encoding="utf-8")

    return setup


def tampered(key: str, name: str, change: Any) -> Callable[[Path, dict[str, Path]], None]:
    """Set-up: a copy of a shared input folder (`ck` or `prep`) with one file changed.

    `change` gets the file's JSON (for .json files) or bytes and returns the new content (bytes and str are
    written as they are, anything else as JSON); DELETE removes the file; a non-callable is the new content.
    """

    def setup(cwd: Path, inputs: dict[str, Path]) -> None:
        folder = cwd / key
        shutil.copytree(inputs[key], folder)
        path = folder / name
        if change is DELETE:
            path.unlink()
            return
        if callable(change):
            old = json.loads(path.read_text(encoding="utf-8")) if name.endswith(".json") else path.read_bytes()
            new = change(old)
        else:
            new = change
        if isinstance(new, bytes):
            path.write_bytes(new)
        else:
            path.write_text(new if isinstance(new, str) else json.dumps(new), encoding="utf-8")

    return setup


def swap_two(chars: list[str]) -> list[str]:
    """The vocabulary with its 11th and 12th characters swapped."""
    chars = list(chars)
    chars[10], chars[11] = chars[11], chars[10]
    return chars


def foreign_optimizer(cwd: Path, inputs: dict[str, Path]) -> None:
    """Set-up: a copy of the checkpoint whose optimizer.pt belongs to another model."""
    import torch

    shutil.copytree(inputs["ck"], cwd / "ck")
    other = torch.nn.Linear(3, 5)
    opt = torch.optim.AdamW(other.parameters())
    other(torch.ones(2, 3)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), cwd / "ck" / "optimizer.pt")


def other_shape_weights(cwd: Path, inputs: dict[str, Path]) -> None:
    """Set-up: a copy of the checkpoint whose weights are a valid safetensors file of the wrong shapes."""
    import torch
    from safetensors.torch import save_file

    shutil.copytree(inputs["ck"], cwd / "ck")
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(cwd / "ck" / "model.safetensors"))


TRAIN = "train --data {prep} --preset tiny --max-iters 2 --device cpu --no-progress --out out "
SAMPLE = "sample --checkpoint {ck} --max-new-tokens 3 --device cpu "
RESUME = "train --data {prep} --out ck --resume --max-iters 4 --device cpu --no-progress "
TUNE = "--data {prep} --trials 1 --device cpu --no-progress "
MATMUL = "matmul --sizes 8 --libs torch --repeat 1 --min-time 0.01 --no-progress --out out "
VS = "vs-course --rounds 1 --steps 1 --no-progress --out out "
STEP = "train-step --configs tiny --steps 1 --devices cpu --dtypes float32 --no-progress --out out "
SPACE_FILE = "--space space.json"


A_FILE = files({"notadir": "a file"})  # for outputs that cannot be written: a path that is, or is under, a file


def space(text: str) -> Callable[[Path, dict[str, Path]], None]:
    return files({"space.json": text})


def cfg(obj: Any) -> Callable[[Path, dict[str, Path]], None]:
    return files({"cfg.json": obj if isinstance(obj, str) else json.dumps(obj)})


# (id, cli, arguments, what the error line must name, set-up): see Case below
CASES: list[tuple] = [
    # --- python -m gptcore: commands ---------------------------------------------------------------------
    ("gptcore-no-command", "gptcore", "", "command", None),
    ("gptcore-unknown-command", "gptcore", "fit", "fit", None),
    # --- prepare --------------------------------------------------------------------------------------------
    ("prepare-no-source", "gptcore", "prepare --out out", "src", None),
    ("prepare-no-out", "gptcore", "prepare {corpus} --no-progress", "--out", None),
    ("prepare-source-missing", "gptcore", "prepare missing.txt --out out --no-progress", "missing.txt", None),
    ("prepare-source-not-text", "gptcore", "prepare notes.csv --out out --no-progress", "notes.csv",
     files({"notes.csv": "a,b\n"})),
    ("prepare-source-empty-folder", "gptcore", "prepare shards --out out --no-progress", "shards",
     files({"shards/": None})),
    ("prepare-source-empty-text", "gptcore", "prepare empty.txt --out out --no-progress", "empty.txt",
     files({"empty.txt": ""})),
    ("prepare-source-one-character", "gptcore", "prepare one.txt --out out --no-progress", "one.txt",
     files({"one.txt": "a"})),
    ("prepare-source-corrupt-xz", "gptcore", "prepare bad.xz --out out --no-progress", "bad.xz",
     files({"bad.xz": b"\xfd7zXZ\x00 not really xz"})),
    ("prepare-all-sources-corrupt-skip-bad", "gptcore", "prepare shards --out out --no-progress --skip-bad",
     "shards", files({"shards/a.xz": b"junk", "shards/b.xz": b"junk"})),
    *[(f"prepare-val-fraction-{v}", "gptcore", f"prepare {{corpus}} --out out --no-progress --val-fraction {v}",
       "--val-fraction", None) for v in ("0", "1", "1.5", "-0.1", "nan", "inf", "abc")],
    *[(f"prepare-workers-{v}", "gptcore", f"prepare {{corpus}} --out out --no-progress --workers {v}",
       "--workers", None) for v in ("0", "-1", "1.5", "abc")],
    ("prepare-unknown-flag", "gptcore", "prepare {corpus} --out out --shards 3", "--shards", None),
    ("prepare-out-foreign-folder", "gptcore", "prepare {corpus} --out out --no-progress", "out:",
     files({"out/mine.txt": "keep me"})),
    ("prepare-out-is-a-file", "gptcore", "prepare {corpus} --out notadir --no-progress", "notadir", A_FILE),
    ("prepare-out-under-a-file", "gptcore", "prepare {corpus} --out notadir/x --no-progress", "notadir/x", A_FILE),
    # --- train: integer config fields (the flag refuses non-integers; the config dataclass the ranges) ---
    *[(f"train-{flag}-{v}", "gptcore", TRAIN + f"--{flag}={v}", flag.replace("-", "_") if v.lstrip("-").isdigit()
       else f"--{flag}", None)
      for flag, v in [("n-layer", "0"), ("n-layer", "-1"), ("n-layer", "abc"), ("n-layer", "1.5"),
                      ("n-layer", "99999999999999999999"), ("block-size", "0"), ("n-embed", "0"), ("n-head", "0"),
                      ("batch-size", "0"), ("batch-size", "1e3"), ("eval-interval", "0"), ("eval-iters", "0"),
                      ("grad-accum-steps", "0"), ("warmup-iters", "-1"), ("eval-batch-size", "0"),
                      ("max-iters", "0"), ("vocab-size", "-1"), ("seed", "99999999999999999999999"),
                      ("seed", "-1"), ("seed", "1.5"), ("seed", "1e23")]],
    ("train-n-embed-not-divisible-by-n-head", "gptcore", TRAIN + "--n-embed 30 --n-head 4", "n_embed", None),
    ("train-vocab-size-not-the-corpus", "gptcore", TRAIN + "--vocab-size 5", "vocab_size", None),
    # --- train: float config fields: NaN and inf are refused by the flag, ranges by the config ---------
    *[(f"train-{flag}-{v}", "gptcore", TRAIN + f"--{flag}={v}", f"--{flag}", None)
      for flag in ("lr", "weight-decay", "grad-clip", "dropout", "max-seconds")
      for v in ("nan", "inf", "-inf", "abc")],
    *[(f"train-{flag}-{v}", "gptcore", TRAIN + f"--{flag}={v}", field, None)
      for flag, v, field in [("lr", "0", "learning_rate"), ("lr", "-1", "learning_rate"),
                             ("weight-decay", "-0.1", "weight_decay"), ("grad-clip", "-1", "grad_clip"),
                             ("dropout", "1", "dropout"), ("dropout", "-0.1", "dropout"),
                             ("max-seconds", "0", "max_seconds"), ("max-seconds", "-1", "max_seconds")]],
    *[(f"train-betas-{v}", "gptcore", TRAIN + f"--betas={v}", "--betas", None)
      for v in ("nan,0.99", "0.9", "0.9,0.99,0.999", "a,b")],
    ("train-betas-1,0.99", "gptcore", TRAIN + "--betas 1,0.99", "betas", None),
    ("train-no-budget", "gptcore", TRAIN + "--max-iters none --max-seconds none", "max_iters", None),
    # --- train: choices, switches, devices ---------------------------------------------------------------
    *[(f"train-{flag}-{v}", "gptcore", TRAIN + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("dtype", "float8"), ("norm", "middle"), ("activation", "tanh"), ("lr-decay", "linear"),
                      ("preset", "huge"), ("model", "llama")]],
    ("train-float16-on-cpu", "gptcore", TRAIN + "--dtype float16", "--dtype float16", None),
    ("train-device-tpu", "gptcore", TRAIN + "--device tpu", "--device", None),
    ("train-device-cuda-7", "gptcore", TRAIN + "--device cuda:7", "--device cuda:7", None),
    ("train-device-empty", "gptcore", TRAIN + "--device=", "device", None),
    ("train-bias-with-value", "gptcore", TRAIN + "--bias=1", "--bias", None),
    ("train-compile-yes", "gptcore", TRAIN + "--compile yes", "yes", None),
    ("train-unknown-flag", "gptcore", TRAIN + "--n-layers 3", "--n-layers", None),
    # --- train: data --------------------------------------------------------------------------------------
    ("train-data-missing", "gptcore", TRAIN + "--data missing.txt", "missing.txt", None),
    ("train-data-folder-not-prepared", "gptcore", TRAIN + "--data texts", "texts", files({"texts/a.txt": "x"})),
    ("train-data-not-text", "gptcore", TRAIN + "--data notes.csv", "notes.csv", files({"notes.csv": "a,b\n"})),
    ("train-data-empty-text", "gptcore", TRAIN + "--data {empty}", "empty.txt", None),
    ("train-data-short-corpus-names-the-text-file", "gptcore", TRAIN + "--data {short}", "short.txt", None),
    ("train-meta-without-tokenizer", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {k: v for k, v in m.items() if k != "tokenizer"})),
    ("train-meta-a-json-list", "gptcore", TRAIN + "--data prep", "meta.json", tampered("prep", "meta.json", [])),
    ("train-meta-truncated-chars", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "tokenizer": {**m["tokenizer"],
                                                                   "chars": m["tokenizer"]["chars"][:20]}})),
    ("train-meta-swapped-chars", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "tokenizer": {**m["tokenizer"],
                                                                   "chars": swap_two(m["tokenizer"]["chars"])}})),
    ("train-meta-multi-character-entry", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "tokenizer": {"type": "char", "chars": ["ab"]}})),
    ("train-meta-truncated-file", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: json.dumps(m)[:40])),
    ("train-meta-format-2", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "format": 2})),
    ("train-meta-dtype-float64", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "dtype": "float64"})),
    ("train-meta-token-count-text", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "train_tokens": "many"})),
    ("train-meta-empty-val-split", "gptcore", TRAIN + "--data prep", "meta.json",
     tampered("prep", "meta.json", lambda m: {**m, "val_tokens": 0})),
    ("train-train-bin-truncated", "gptcore", TRAIN + "--data prep", "train.bin",
     tampered("prep", "train.bin", lambda b: b[:-10])),
    ("train-val-bin-missing", "gptcore", TRAIN + "--data prep", "val.bin", tampered("prep", "val.bin", DELETE)),
    # --- train: --config files -------------------------------------------------------------------------
    ("train-config-missing", "gptcore", TRAIN + "--config missing.json", "missing.json", None),
    ("train-config-not-json", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg("{not json")),
    ("train-config-a-json-list", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg([1, 2])),
    ("train-config-unknown-field", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"n_layers": 2})),
    ("train-config-misplaced-field", "gptcore", TRAIN + "--config cfg.json", "cfg.json",
     cfg({"model": {"batch_size": 4}})),
    ("train-config-model-not-an-object", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"model": []})),
    ("train-config-n-embed-not-divisible", "gptcore", TRAIN + "--config cfg.json", "cfg.json",
     cfg({"n_embed": 30, "n_head": 4})),
    ("train-config-lr-nan", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg('{"learning_rate": NaN}')),
    ("train-config-grad-clip-infinity", "gptcore", TRAIN + "--config cfg.json", "cfg.json",
     cfg('{"grad_clip": Infinity}')),
    ("train-config-weight-decay-nan", "gptcore", TRAIN + "--config cfg.json", "cfg.json",
     cfg('{"weight_decay": NaN}')),
    ("train-config-seed-float", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"seed": 1e23})),
    ("train-config-seed-too-big", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"seed": 2**64})),
    ("train-config-seed-true", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"seed": True})),
    ("train-config-dropout-text", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"dropout": "0.1"})),
    ("train-config-bias-text", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"bias": "yes"})),
    ("train-config-betas-one-number", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"betas": 0.9})),
    ("train-config-betas-bool", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"betas": [True, 0.9]})),
    ("train-config-n-layer-float", "gptcore", TRAIN + "--config cfg.json", "cfg.json", cfg({"n_layer": 2.5})),
    # --- train: --out and --resume -------------------------------------------------------------------------
    ("train-out-foreign-folder", "gptcore", TRAIN + "--out mine", "mine", files({"mine/notes.txt": "keep"})),
    ("train-out-under-a-file", "gptcore", TRAIN + "--out notadir/ck", "notadir/ck", A_FILE),
    ("train-out-is-a-file", "gptcore", TRAIN + "--out notadir", "notadir", A_FILE),
    ("resume-no-checkpoint", "gptcore", RESUME + "--out nowhere", "nowhere", None),
    ("resume-model-flag-changed", "gptcore", RESUME + "--out {ck} --n-layer 3", "--resume", None),
    ("resume-other-corpus", "gptcore", RESUME + "--out {ck} --data {short}", "short.txt", None),
    ("resume-foreign-optimizer", "gptcore", RESUME, "optimizer.pt", foreign_optimizer),
    ("resume-optimizer-garbage", "gptcore", RESUME, "optimizer.pt",
     tampered("ck", "optimizer.pt", b"not a zip")),
    # --- sample and chat: flags ------------------------------------------------------------------------------
    *[(f"sample-{flag}-{v}", "gptcore", SAMPLE + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1"), ("temperature", "x"),
                      ("top-k", "0"), ("top-k", "-1"), ("top-k", "abc"), ("max-new-tokens", "-1"),
                      ("max-new-tokens", "1.5"), ("max-new-tokens", "abc"), ("max-new-tokens", "10000000000"),
                      ("seed", "99999999999999999999999"),
                      ("seed", "-1"), ("seed", "1e23"), ("seed", "abc")]],
    ("sample-device-tpu", "gptcore", SAMPLE + "--device tpu", "--device", None),
    ("sample-device-cuda-7", "gptcore", SAMPLE + "--device cuda:7", "--device cuda:7", None),
    ("sample-prompt-unknown-characters", "gptcore", SAMPLE + "--prompt caf\u00e9\u2603", "--prompt", None),
    ("chat-temperature-nan", "gptcore", "chat --checkpoint {ck} --temperature nan", "--temperature", None),
    ("chat-seed-too-big", "gptcore", "chat --checkpoint {ck} --seed 4294967296", "--seed", None),
    # --- sample: checkpoints -------------------------------------------------------------------------------
    ("sample-checkpoint-missing", "gptcore", SAMPLE + "--checkpoint nowhere", "nowhere", None),
    ("sample-checkpoint-is-a-file", "gptcore", SAMPLE + "--checkpoint notadir", "notadir", A_FILE),
    ("sample-checkpoint-empty-folder", "gptcore", SAMPLE + "--checkpoint empty", "state.json",
     files({"empty/": None})),
    *[(f"sample-{case}", "gptcore", SAMPLE + "--checkpoint ck", name, tampered("ck", name, change))
      for case, name, change in [
          ("state-missing", "state.json", DELETE),
          ("state-not-json", "state.json", "{"),
          ("state-a-json-list", "state.json", []),
          ("state-format-2", "state.json", lambda s: {**s, "format": 2}),
          ("state-step-not-a-number", "state.json", lambda s: {**s, "step": "abc"}),
          ("config-missing", "config.json", DELETE),
          ("config-not-json", "config.json", "not json"),
          ("config-bad-field", "config.json", lambda c: {**c, "model": {**c["model"], "n_head": 3}}),
          ("config-grad-clip-nan", "config.json", lambda c: json.dumps({**c, "train": {**c["train"],
                                                                                      "grad_clip": float("nan")}})),
          ("config-kind-llama", "config.json", lambda c: {**c, "kind": "llama"}),
          ("vocab-missing", "vocab.json", DELETE),
          ("vocab-not-char", "vocab.json", {"type": "bpe"}),
          ("vocab-swapped-characters", "vocab.json", lambda v: {**v, "chars": swap_two(v["chars"])}),
          ("vocab-repeated-character", "vocab.json", lambda v: {**v, "chars": [*v["chars"][:-1], v["chars"][0]]}),
          ("weights-missing", "model.safetensors", DELETE),
          ("weights-truncated", "model.safetensors", lambda b: b[: len(b) // 2]),
      ]],
    # The vocabulary and the model's vocab_size disagree: the checkpoint folder is named.
    ("sample-config-vocab-size-differs", "gptcore", SAMPLE + "--checkpoint ck", "ck: vocabulary",
     tampered("ck", "config.json", lambda c: {**c, "model": {**c["model"], "vocab_size": 7}})),
    ("sample-vocab-one-character-fewer", "gptcore", SAMPLE + "--checkpoint ck", "ck/vocab.json",
     tampered("ck", "vocab.json", lambda v: {**v, "chars": v["chars"][:-1]})),
    ("sample-weights-of-another-shape", "gptcore", SAMPLE + "--checkpoint ck", "model.safetensors",
     other_shape_weights),
    # --- python -m tune: flags ------------------------------------------------------------------------------
    *[(f"tune-{flag}-{v}", "tune", TUNE + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("trials", "0"), ("trials", "-1"), ("trials", "abc"), ("trials", "2.5"),
                      ("budget", "nan"), ("budget", "inf"), ("budget", "0"), ("budget", "-1"), ("budget", "2x"),
                      ("budget", "0steps"), ("budget", "1.5steps"), ("rungs", "0"), ("rungs", "9"),
                      ("reduction-factor", "1"), ("schedule", "linear"), ("references", "nope"),
                      ("references", ","),
                      ("trial-timeout", "nan"), ("trial-timeout", "0"), ("trial-timeout", "-inf"),
                      ("memory-limit", "abc"), ("memory-limit", "0"), ("memory-limit", "..."),
                      ("memory-limit", "1e9"), ("memory-limit", "-5GiB"), ("memory-limit", "0.5B"),
                      ("seed", "-1"), ("seed", "4294967296"), ("seed", "1e23"), ("seed", "abc"),
                      ("objective", "speed"), ("pruner", "sha"), ("sampler", "bayes"), ("dtype", "float8"),
                      ("batch-size", "3"), ("batch-size", "0"), ("batch-size", "nan"), ("batch-size", "inf"),
                      ("batch-size", "8,4"), ("batch-size", "1,2,4"), ("block-size", "1e300"),
                      ("n-embed", "100"), ("n-head", "128"), ("n-layer", "1.5"), ("learning-rate", "0"),
                      ("learning-rate", "-1e-3,1e-3"), ("learning-rate", "1e-4,inf")]],
    ("tune-trial-seconds-is-now-budget", "tune", TUNE + "--trial-seconds 1", "--trial-seconds", None),
    ("tune-unknown-flag", "tune", TUNE + "--trial 3", "--trial", None),
    ("tune-device-tpu", "tune", TUNE + "--device tpu", "--device", None),
    ("tune-device-cuda-7", "tune", TUNE + "--device cuda:7", "--device cuda:7", None),
    ("tune-float16-on-cpu", "tune", TUNE + "--dtype float16", "--dtype float16", None),
    ("tune-memory-limit-too-small", "tune", TUNE + "--memory-limit 1MiB", "--memory-limit", None),
    ("tune-results-under-a-file", "tune", TUNE + "--results notadir/results", "--results", A_FILE),
    ("tune-storage-bad-url", "tune", TUNE + "--storage bogus://nowhere", "--storage", None),
    ("tune-storage-sqlite-folder-missing", "tune", TUNE + "--storage sqlite:///no/such/dir/x.db", "--storage",
     None),
    ("tune-data-missing", "tune", TUNE + "--data missing.txt", "missing.txt", None),
    ("tune-data-short-corpus", "tune", TUNE + "--data {short}", "block_size", None),
    ("tune-data-meta-without-tokenizer", "tune", TUNE + "--data prep --budget 2steps", "meta.json",
     tampered("prep", "meta.json", lambda m: {k: v for k, v in m.items() if k != "tokenizer"})),
    # --- tune: --space files ------------------------------------------------------------------------------
    ("tune-space-no-such-name-or-file", "tune", TUNE + "--space huge", "--space huge", None),
    *[(f"tune-space-{case}", "tune", TUNE + SPACE_FILE, "space.json", space(text)) for case, text in [
        ("infinity", '{"learning_rate": [1e-4, Infinity]}'),
        ("nan", '{"learning_rate": NaN}'),
        ("bool-bound", '{"batch_size": [true, 2]}'),
        ("base-names-itself", '{"base": "space.json"}'),
        ("base-unknown", '{"base": "huge"}'),
        ("base-a-list", '{"base": ["small"]}'),
        ("not-json", "{batch_size: 4"),
        ("a-json-list", "[4, 8]"),
        ("unknown-parameter", '{"mlp_ratio": [2, 4]}'),  # dropout is a field to search since #23.2
        ("three-numbers", '{"n_layer": [1, 2, 3]}'),
        ("text-bound", '{"n_layer": "2"}'),
        ("null-bound", '{"n_layer": null}'),
        ("object-bound", '{"n_layer": {"low": 1}}'),
        ("low-above-high", '{"n_layer": [4, 2]}'),
        ("not-a-power-of-two", '{"block_size": [16, 48]}'),
        ("n-embed-not-multiple-of-64", '{"n_embed": [64, 100]}'),
        ("huge-integer", '{"n_layer": [1, 1e300]}'),
        ("zero-learning-rate", '{"learning_rate": [0, 1e-3]}'),
    ]],
    ("tune-space-not-utf8", "tune", TUNE + SPACE_FILE, "space.json", files({"space.json": b"\xff\xfe{"})),
    # --- tune report ---------------------------------------------------------------------------------------
    ("report-no-study", "tune", "report --results nowhere", "--study-name", None),
    ("report-two-studies", "tune", "report", "--study-name",
     files({"results/a/study.db": b"", "results/b/study.db": b""})),
    ("report-study-file-missing", "tune", "report --study-name x", "study.db", None),
    ("report-study-named-twice", "tune", "report a --study-name b", "--study-name", None),
    ("report-study-folder-missing", "tune", "report results/nowhere", "results/nowhere", None),
    ("report-storage-file-missing", "tune", "report --study-name x --storage sqlite:///new.db", "--storage", None),
    ("report-storage-bad-url", "tune", "report --study-name x --storage bogus://nowhere", "--storage", None),
    ("report-empty-study-file", "tune", "report --study-name x", "study.db", files({"results/x/study.db": b""})),
    ("report-garbage-study-file", "tune", "report --study-name x", "study.db",
     files({"results/x/study.db": b"garbage" * 100})),
    ("report-unknown-flag", "tune", "report --trials 3", "--trials", None),
    # --- python -m benchmarks ------------------------------------------------------------------------------
    ("benchmarks-no-command", "benchmarks", "", "command", None),
    ("benchmarks-unknown-command", "benchmarks", "gemm", "gemm", None),
    *[(f"matmul-{flag}-{v}", "benchmarks", MATMUL + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("sizes", "64,abc"), ("sizes", "0"), ("sizes", "64x64"), ("sizes", "8x-1x2"), ("sizes", "''"),
                      ("dtypes", "float8"), ("devices", "tpu"), ("devices", "cuda:x"), ("libs", "jax"),
                      ("threads", "0"), ("threads", "-1"), ("threads", "abc"), ("threads", "4294967296"),
                      ("repeat", "0"), ("repeat", "1.5"), ("min-time", "nan"), ("min-time", "inf"),
                      ("min-time", "0"), ("min-time", "-1"), ("cpu-peak-gflops", "-5"), ("cpu-peak-gflops", "nan"),
                      ("cpu-peak-gflops", "0"), ("cpu-peak-gflops", "inf"), ("check-timer", "abc")]],
    ("matmul-float16-on-cpu", "benchmarks", MATMUL + "--devices cpu --dtypes float16", "--dtypes float16", None),
    ("matmul-out-under-a-file", "benchmarks", MATMUL + "--out notadir/bench", "notadir/bench", A_FILE),
    *[(f"train-step-{flag}-{v}", "benchmarks", STEP + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("configs", "huge"), ("steps", "0"), ("threads", "0"), ("dtypes", "tf32"),
                      ("devices", "tpu")]],
    ("train-step-out-under-a-file", "benchmarks", STEP + "--out notadir/bench", "notadir/bench", A_FILE),
    ("train-step-data-missing", "benchmarks", STEP + "--data missing.txt", "missing.txt", None),
    ("train-step-short-corpus", "benchmarks", STEP + "--data {short}", "short.txt", None),
    *[(f"vs-course-{flag}-{v}", "benchmarks", VS + f"--{flag}={v}", f"--{flag}", None)
      for flag, v in [("rounds", "0"), ("steps", "0"), ("threads", "0"), ("steps", "abc")]],
    ("vs-course-data-missing", "benchmarks", VS + "--data missing.txt", "missing.txt", None),
    ("vs-course-short-corpus", "benchmarks", VS + "--data {short}", "short.txt", None),
    ("vs-course-prepared-folder", "benchmarks", VS + "--data {prep}", "--data", None),
]


class Case(NamedTuple):
    """One row of the table."""

    id: str
    cli: str  # gptcore | tune | benchmarks
    args: str  # {corpus}, {prep}, {ck}, {short}, {empty}: the shared inputs (each case gets its own copy)
    names: str  # what the error line must name: the flag, field or file at fault
    setup: Callable[[Path, dict[str, Path]], None] | None  # makes the case's own inputs in its folder


class Outcome(NamedTuple):
    """What one case's command did, and its folders' trees before and after it."""

    proc: subprocess.CompletedProcess
    before: dict[str, Any]
    after: dict[str, Any]


TABLE = [Case(*row) for row in CASES]


def tree(folder: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under `folder` (hidden ones included) -> (is a folder, size, mtime)."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def case_folders(case: Case, shared: dict[str, Path], tmp: Path) -> tuple[Path, Path, dict[str, Path]]:
    """Set up one case in `tmp`: its working folder, its own copies of the shared inputs; (cwd, inputs, paths)."""
    cwd, own = tmp / "cwd", tmp / "inputs"
    cwd.mkdir()
    own.mkdir()
    paths = {"corpus": CORPUS}
    for key in ("ck", "prep", "short", "empty"):
        if f"{{{key}}}" in case.args:
            paths[key] = own / shared[key].name
            (shutil.copytree if shared[key].is_dir() else shutil.copy2)(shared[key], paths[key])
    if case.setup is not None:
        case.setup(cwd, shared)
    return cwd, own, paths


def run_case(case: Case, shared: dict[str, Path], tmp: Path) -> Outcome:
    """Run one case as a real `python -m CLI` process in `tmp`, with its own cache."""
    cwd, own, paths = case_folders(case, shared, tmp)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GPTCORE_CACHE": str(tmp / "cache")}
    before = {"cwd": tree(cwd), "inputs": tree(own)}
    argv = [a.format(**paths) for a in shlex.split(case.args)]
    proc = subprocess.run([sys.executable, "-m", case.cli, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    return Outcome(proc, before, {"cwd": tree(cwd), "inputs": tree(own)})


def entry_point(cli: str) -> tuple[Callable[[list[str] | None], int | None], str]:
    """The CLI's main() and the name its errors start with when run as `python -m CLI`."""
    import importlib

    module = importlib.import_module(f"{cli}.__main__")
    return module.main, module.PROG


def run_case_here(case: Case, shared: dict[str, Path], tmp: Path, monkeypatch, capfd) -> Outcome:
    """Run one case in this process: main(argv) through cliutil.run in the case's folder, with its own cache."""
    from gptcore.cliutil import run

    cwd, own, paths = case_folders(case, shared, tmp)
    before = {"cwd": tree(cwd), "inputs": tree(own)}
    argv = [a.format(**paths) for a in shlex.split(case.args)]
    main, prog = entry_point(case.cli)
    capfd.readouterr()  # only this case's output
    with monkeypatch.context() as m, pytest.raises(SystemExit) as info:  # any other exception fails the test
        m.chdir(cwd)
        m.setenv("GPTCORE_CACHE", str(tmp / "cache"))
        run(main, argv, prog=prog)
    out, err = capfd.readouterr()
    proc = subprocess.CompletedProcess([case.cli, *argv], info.value.code, out, err)
    return Outcome(proc, before, {"cwd": tree(cwd), "inputs": tree(own)})


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """The inputs cases copy: a prepared corpus, a tiny checkpoint trained on it, a short and an empty text."""
    from gptcore.__main__ import main
    from gptcore.cliutil import run
    from gptcore.prepare import prepare

    folder = tmp_path_factory.mktemp("shared")
    prepare(CORPUS, folder / "prep", progress=False)
    with pytest.raises(SystemExit) as info:
        run(main, ["train", "--data", str(folder / "prep"), "--out", str(folder / "ck"), "--preset", "tiny",
                   "--max-iters", "2", "--device", "cpu", "--no-progress"])
    assert info.value.code == 0
    (folder / "short.txt").write_text("Dorothy lived in Kansas.\n", encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    return {"prep": folder / "prep", "ck": folder / "ck", "short": folder / "short.txt", "empty": folder / "empty.txt"}


# One case per CLI that also runs as a real process: each reaches past argument parsing (a file is read).
IN_A_PROCESS = ("train-config-not-json", "tune-space-not-json", "vs-course-data-missing")


def test_the_table_is_well_formed():
    ids = [c.id for c in TABLE]
    assert len(ids) == len(set(ids))
    assert {c.cli for c in TABLE} == {"gptcore", "tune", "benchmarks"}
    assert {c.cli for c in TABLE if c.id in IN_A_PROCESS} == {"gptcore", "tune", "benchmarks"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TABLE])
def test_refused_with_one_line_exit_2_and_nothing_left(case, shared, tmp_path, monkeypatch, capfd):
    check_refused(case, run_case_here(case, shared, tmp_path, monkeypatch, capfd))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TABLE if c.id in IN_A_PROCESS])
def test_refused_the_same_way_by_the_real_command_in_its_own_process(case, shared, tmp_path):
    check_refused(case, run_case(case, shared, tmp_path))


def check_refused(case: Case, outcome: Outcome) -> None:
    """Exit 2, one line naming the culprit, no traceback, no training, nothing created or changed."""
    proc, before, after = outcome
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert lines[0].startswith(f"python -m {case.cli}") and ": error: " in lines[0], lines[0]
    assert case.names in lines[0].split(": error: ", 1)[1], f"{case.names!r} is not named in: {lines[0]}"
    assert "train loss" not in proc.stdout, "refused only after training"
    assert after == before, "files or folders left behind (or inputs changed)"
