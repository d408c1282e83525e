"""Warm starts (--warm-start): an earlier study's best configurations are the first trials, once, labelled."""

import contextlib
import json
import re
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest

from gptcore.cliutil import run
from gptcore.errors import UserError
from tests.test_tune import TINY_SPACE, settings
from tune.__main__ import main
from tune.core.space import PARAMS, Space, load_space, preset_params
from tune.report.frame import trials_frame
from tune.search import dispatch, warmstart
from tune.search.study import run_study
from tune.store.spec import resolve_storage
from tune.store.storage import make_storage

SPACE = load_space("small", "cpu", None, TINY_SPACE)
NO_LOCK = contextlib.nullcontext()  # a study in memory: one process, nothing to lock
SPACE_FLAGS = [arg for k, v in TINY_SPACE.items() for arg in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]


def cfg(batch: int, block: int, heads: int, lr: float) -> dict:
    """A configuration of TINY_SPACE (n_embed 64, one layer)."""
    return {"batch_size": batch, "block_size": block, "n_embed": 64, "n_head": heads, "n_layer": 1,
            "learning_rate": lr}


# Learning rates with every digit a float holds: a CSV must give them back exactly.
A, B, C, D, E, F = (cfg(2, 8, 1, 0.0012345678901234567), cfg(2, 16, 1, 0.0023456789012345678),
                    cfg(4, 8, 2, 0.0034567890123456789), cfg(4, 16, 2, 0.004), cfg(2, 8, 2, 0.005),
                    cfg(4, 8, 1, 0.006))
TINY = preset_params("tiny")  # n_embed 32, two layers: outside TINY_SPACE


def row(number, status, values, val_loss, tokens_per_s=100.0, reference=None) -> dict:
    return {"number": number, "reference": reference, "status": status, **values, "val_loss": val_loss,
            "tokens_per_s": tokens_per_s}


def source_folder(folder, rows, objective=None):
    """A results folder as python -m tune writes it: trials.csv, and best.json's provenance with its objective."""
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    if objective:
        write_objective(folder, objective)
    return folder


def write_objective(folder, objective):
    """best.json as the report writes it, reduced to what a warm start reads: provenance.objective."""
    (folder / "best.json").write_text(json.dumps({"model": {}, "train": {}, "provenance": {"objective": objective}}))


def prepare(tmp_path, **kw) -> warmstart.WarmStart:
    s = settings(tmp_path, **kw)
    results_dir = s.store.results / s.store.study_name
    return warmstart.prepare(s, SPACE, resolve_storage(s.store.storage, results_dir / "study.db"), s.store.study_name,
                             results_dir)


def params_of(row: pd.Series) -> dict:
    return {k: row[k] for k in PARAMS}


# --- the search space ---------------------------------------------------------------------------------


def test_encode_inverts_decode_and_contains_is_what_suggest_can_draw():
    params = Space.encode(A)
    assert params == {"log2(batch_size)": 1, "log2(block_size)": 3, "log2(n_head)": 0, "n_embed": 64, "n_layer": 1,
                      "learning_rate": 0.0012345678901234567}
    assert Space.decode(params) == A and SPACE.suggest(optuna.trial.FixedTrial(params)) == A
    assert SPACE.contains(A) and SPACE.contains({k: np.float64(v) for k, v in A.items()})  # as read from a table
    for name, bad in [("batch_size", 8), ("batch_size", 3), ("block_size", 32), ("n_embed", 128), ("n_head", 4),
                      ("n_layer", 2), ("learning_rate", 0.05), ("learning_rate", float("nan")),
                      ("batch_size", True), ("n_head", None)]:
        assert not SPACE.contains({**A, name: bad}), (name, bad)
    small = {**cfg(8, 32, 4, 1e-3), "n_embed": 192, "n_layer": 3}
    assert Space().contains(small)  # a step of 64 inside 64..256
    for name, bad in [("n_embed", 100), ("n_layer", 2.5), ("batch_size", 8.5)]:
        assert not Space().contains({**small, name: bad}), (name, bad)


# --- reading a source ---------------------------------------------------------------------------------


def test_the_best_distinct_finished_configurations_ranked_by_the_sources_objective(tmp_path):
    rows = [row(0, "ok", A, 2.0, 100), row(1, "pruned", F, 1.0, 900),  # better, but never reached the target
            row(2, "ok", B, 1.5, 300), row(3, "ok", B, 1.6, 320),  # the same configuration twice (a retry)
            row(4, "ok", C, 1.7, 50), row(None, "ok", TINY, 1.8, 500, reference="tiny"),
            row(5, "ok", D, 1.9, 80), row(6, "ok", E, 2.5, 60),  # the sixth distinct: beyond the best five
            row(7, "error", F, float("nan"), float("nan"))]
    src = source_folder(tmp_path / "old", rows)
    warm = prepare(tmp_path, trials=3, warm_start=str(src))
    assert warm.objective == "loss" and warm.key == str((src / "trials.csv").resolve())
    assert [c.label for c in warm.chosen] == [f"{src} trial {n}" for n in (2, 4, 5)]
    assert [c.values for c in warm.chosen] == [B, C, D] and [c.figure for c in warm.chosen] == [1.5, 1.7, 1.9]
    assert [c.label for c in warm.outside] == [f"{src} ref tiny"] and "n_embed 32" in warm.outside[0].outside
    assert [c.label for c in warm.over] == [f"{src} trial 0"]  # fits, but --trials 3 is full
    text = warmstart.describe(warm)
    assert "ranked by val_loss (no best.json beside it states its objective)" in text
    assert "3 enqueued" in text and "skipped 1 outside this search space" in text and "beyond --trials" in text
    assert not (tmp_path / "results").exists()  # reading a source creates nothing

    write_objective(src, "throughput")
    warm = prepare(tmp_path, trials=3, warm_start=str(src / "trials.csv"))
    assert warm.objective == "throughput" and "from the best.json beside it" in warmstart.describe(warm)
    # tokens/s: tiny (outside), then B at its better figure (trial 3), A, D; E beyond --trials.
    assert [c.label for c in warm.chosen] == [f"{src / 'trials.csv'} trial {n}" for n in (3, 0, 5)]
    assert [c.values for c in warm.over] == [E]


def test_a_confirmation_run_is_never_a_candidate_whatever_its_lucky_seed(tmp_path):
    rows = [row(2, "ok", B, 1.95), row(4, "ok", C, 1.97),
            {**row(None, "ok", B, 1.90), "confirm_of": "trial 2"}, {**row(None, "ok", D, 1.80), "confirm_of": "x"}]
    src = source_folder(tmp_path / "old", rows)
    warm = prepare(tmp_path, trials=5, warm_start=str(src))
    assert [(c.label, c.figure) for c in warm.chosen] == [(f"{src} trial 2", 1.95), (f"{src} trial 4", 1.97)]


def test_enqueued_once_claimed_first_with_exactly_its_values(tmp_path):
    src = source_folder(tmp_path / "old", [row(0, "ok", A, 2.0), row(1, "ok", B, 1.5)])
    warm = prepare(tmp_path, trials=5, warm_start=str(src))
    study, said = optuna.create_study(), []
    warmstart.enqueue(study, warm, NO_LOCK, said.append)
    assert study.user_attrs["warm_start"]["enqueued"] == [f"{src} trial 1", f"{src} trial 0"]
    for values, n in ((B, 1), (A, 0)):  # dispatch pops the queue first, as a first attempt
        claim = dispatch.claim_trial(study, 5)
        assert claim.retry_of is None and claim.trial.user_attrs["warm_start"] == f"{src} trial {n}"
        assert SPACE.suggest(claim.trial) == values
    warmstart.enqueue(study, warm, NO_LOCK, said.append)  # a resume with the same flag
    assert len(study.trials) == 2 and "nothing more to enqueue" in said[-1]
    with pytest.raises(UserError, match=f"--warm-start other: study .* was warm-started from {re.escape(str(src))};"):
        warmstart.enqueue(study, replace(warm, given="other", key="other"), NO_LOCK, said.append)
    cold = optuna.create_study()
    cold.ask()
    with pytest.raises(UserError, match="already holds 1 trial"):
        warmstart.enqueue(cold, warm, NO_LOCK, said.append)


def test_a_failed_warm_start_is_queued_again_with_its_label_and_values():
    study = optuna.create_study()
    study.enqueue_trial(Space.encode(C), user_attrs={"warm_start": "old trial 3"})
    trial = study.ask()  # its tuner died before it drew its values
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    dispatch.requeue(study, study.trials[0])
    claim = dispatch.claim_trial(study, 1)
    assert claim.retry_of == 0 and claim.trial.user_attrs["warm_start"] == "old trial 3"
    assert SPACE.suggest(claim.trial) == C


# --- whole (tiny) studies -----------------------------------------------------------------------------


def test_a_source_folders_best_configurations_are_the_first_trials(tmp_path, capsys):
    lr_out = {**E, "learning_rate": 0.05}
    src = source_folder(tmp_path / "old", [
        row(3, "ok", C, 1.2), row(None, "ok", TINY, 1.3, reference="tiny"), row(1, "ok", A, 1.4),
        row(8, "ok", lr_out, 1.5), row(9, "pruned", B, 0.9)])
    out = run_study(settings(tmp_path, trials=3, warm_start=str(src)))
    df = trials_frame(out.study)
    assert list(df["warm_start"].fillna("")) == [f"{src} trial 3", f"{src} trial 1", ""]  # then the sampler
    assert params_of(df.iloc[0]) == C and params_of(df.iloc[1]) == A
    assert df["retry_of"].isna().all() and df["status"].isin(["ok", "pruned"]).all()
    csv = pd.read_csv(out.results_dir / "trials.csv")
    assert list(csv["warm_start"].fillna("")) == list(df["warm_start"].fillna(""))
    assert params_of(csv.iloc[0]) == C
    summary = (out.results_dir / "summary.md").read_text()
    assert f"## Warm start\n\nWarm-started from `{src}`" in summary and "2 enqueued" in summary
    assert "2 outside this search space skipped" in summary and "- best warm-start trial: " in summary
    said = capsys.readouterr().out
    assert f"warm start from {src}" in said and "2 enqueued" in said
    assert "skipped 2 outside this search space" in said and "n_embed 32" in said and "learning_rate 0.05" in said


def test_resume_enqueues_nothing_more_and_another_source_exits_2(tmp_path, capsys):
    src = source_folder(tmp_path / "old", [row(0, "ok", D, 1.5)])
    run_study(settings(tmp_path, trials=1, warm_start=str(src)))
    out = run_study(settings(tmp_path, trials=2, warm_start=str(src)))
    df = trials_frame(out.study)
    assert list(df["warm_start"].fillna("")) == [f"{src} trial 0", ""]
    assert "nothing more to enqueue" in capsys.readouterr().out
    other = source_folder(tmp_path / "other", [row(0, "ok", A, 1.5)])
    with pytest.raises(SystemExit) as info:
        run(main, ["--trials", "3", "--budget", "0.5s", "--device", "cpu", "--references", "none", "--results",
                   str(tmp_path / "results"), "--study-name", "t", "--no-progress", "--warm-start", str(other),
                   *SPACE_FLAGS])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--warm-start {other}: study 't' was warm-started from {src}" in err
    assert len(trials_frame(out.study)) == 2  # nothing enqueued, nothing run


def test_a_resume_does_not_need_the_source_any_more(tmp_path, capsys):
    import shutil

    src = source_folder(tmp_path / "old", [row(0, "ok", D, 1.5)])
    run_study(settings(tmp_path, trials=1, warm_start=str(src)))
    shutil.rmtree(src)  # moved or deleted since the study began
    out = run_study(settings(tmp_path, trials=2, warm_start=str(src)))
    assert list(trials_frame(out.study)["warm_start"].fillna("")) == [f"{src} trial 0", ""]
    assert "that source is no longer readable); nothing more to enqueue" in capsys.readouterr().out
    # A new study given the same missing source is still refused in one line, and creates nothing.
    with pytest.raises(SystemExit) as info:
        run(main, ["--trials", "1", "--budget", "0.5s", "--device", "cpu", "--references", "none", "--results",
                   str(tmp_path / "results"), "--study-name", "new", "--no-progress", "--warm-start", str(src),
                   *SPACE_FLAGS])
    assert info.value.code == 2 and not (tmp_path / "results" / "new").exists()


def test_a_source_study_by_name_in_this_storage_or_in_its_own(tmp_path):
    journal = f"journal:{tmp_path / 'studies.journal'}"
    old = optuna.create_study(study_name="warm-old", storage=make_storage(resolve_storage(journal, tmp_path)))
    for values, loss in ((A, 2.0), (B, 1.5)):  # a finished study of this tool's, made directly
        old.enqueue_trial(Space.encode(values))
        trial = old.ask()
        SPACE.suggest(trial)
        trial.set_user_attr("status", "ok")
        trial.set_user_attr("val_loss", loss)
        old.tell(trial, loss)
    out = run_study(settings(tmp_path, trials=1, storage=journal, warm_start="warm-old"))
    first = trials_frame(out.study).iloc[0]
    assert first["warm_start"] == "warm-old trial 1" and params_of(first) == B

    # Without --storage, a study's own default storage: its results folder's study.db.
    src = run_study(settings(tmp_path, trials=2, study_name="warm-src"))
    ok = trials_frame(src.study).query("status == 'ok'")
    best = ok.loc[ok["val_loss"].idxmin()]
    out = run_study(settings(tmp_path, trials=1, study_name="warm-dst", warm_start="warm-src"))
    first = trials_frame(out.study).iloc[0]
    assert first["warm_start"] == f"warm-src trial {int(best['number'])}" and params_of(first) == params_of(best)
    # The folder it wrote says its objective where a warm start from the folder reads it.
    assert warmstart.csv_objective(src.results_dir / "trials.csv")[0] == "loss"
    best = json.loads((src.results_dir / "best.json").read_text())
    (src.results_dir / "best.json").write_text(json.dumps({**best, "provenance": {**best["provenance"],
                                                                                "objective": "throughput"}}))
    assert warmstart.csv_objective(src.results_dir / "trials.csv")[0] == "throughput"
    # summary.md's wording is for people: rewording it changes nothing a warm start reads.
    (src.results_dir / "summary.md").write_text("# reworded\n- objective: **loss**\n")
    assert warmstart.csv_objective(src.results_dir / "trials.csv") == (
        "throughput", "its objective, from the best.json beside it")


def test_a_warm_start_trial_that_fails_is_retried_with_its_label(tmp_path):
    src = source_folder(tmp_path / "old", [row(7, "ok", B, 1.0)])
    out = run_study(settings(tmp_path, trials=1, warm_start=str(src)), target="tests.tune_faults:boom")
    df = trials_frame(out.study)
    first, retry = df.iloc[0], df.iloc[1]
    assert first["status"] == retry["status"] == "error" and retry["retry_of"] == 0
    assert first["warm_start"] == retry["warm_start"] == f"{src} trial 7"
    assert params_of(first) == params_of(retry) == B
    assert df.iloc[2:]["warm_start"].isna().all()  # what the sampler drew next is no warm start


@pytest.mark.parametrize("source, needle", [
    ("nowhere/at-all", "no such folder or file, nor a study in sqlite:///"),
    ("__EMPTY_DIR__", "no trials.csv in this folder"),
    ("no-such-study", "nor a study in"),
    ("__JOURNAL__", "nor a study in journal:"),
    ("__NO_COLUMNS__", "lacks the column(s) status, batch_size"),
    ("__NOTHING_OK__", "none of its 1 trial(s) trained to the target"),
    ("__OUTSIDE__", "none of its 1 best configuration(s) fits this search space"),
    ("__BINARY__", "not a readable CSV"),
])
def test_a_bad_source_is_one_line_exit_2_and_leaves_nothing_behind(source, needle, tmp_path, capsys):
    extra = []
    if source == "__EMPTY_DIR__":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif source == "__JOURNAL__":
        source, extra = "no-such-study", ["--storage", f"journal:{tmp_path / 'new.journal'}"]
    elif source == "__NO_COLUMNS__":
        source = str(tmp_path / "x.csv")
        (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    elif source in ("__NOTHING_OK__", "__OUTSIDE__"):
        status, values = ("pruned", A) if source == "__NOTHING_OK__" else ("ok", TINY)
        source = str(source_folder(tmp_path / "old", [row(0, status, values, 1.5)]))
    elif source == "__BINARY__":
        source = str(tmp_path / "trials.bin")
        (tmp_path / "trials.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as info:
        run(main, ["--trials", "1", "--budget", "0.5s", "--device", "cpu", "--references", "none", "--results",
                   str(tmp_path / "r"), "--no-progress", "--warm-start", source, *SPACE_FLAGS, *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--warm-start {source}: " in err and needle in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "new.journal").exists()
