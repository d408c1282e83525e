"""--confirm K: the K best configurations train again with fresh seeds once the study is done, and the winner is
the best mean over its runs. Studies here use stand-in targets (tests.tune_faults) whose loss is set by the
configuration and the seed, so the figures each run must give are known."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from gptcore.errors import UserError
from tests.conftest import CORPUS, ROOT, run_cli
from tests.test_tune import TINY_SPACE
from tune.core.budget import Budget, RungPlan
from tune.core.confirm import PRIOR_NOISE, SETTLED, choice_loss, next_confirmation, pooled_noise
from tune.core.space import Space, preset_params
from tune.exec.slots import Slot
from tune.report.frame import COLUMNS, choose_winner, readable, trials_frame
from tune.report.summary import confirmation_section
from tune.search import dispatch
from tune.search.dispatch import DONE, WAIT, Claim, Confirm, Source
from tune.search.session import Session, reference_configs, trial_configs
from tune.search.settings import TuneSettings
from tune.search.study import job_for, run_study
from tune.store.spec import resolve_storage
from tune.store.storage import confirm_study_name, load_confirms, make_storage

STEADY, CROSSING, SEED_ONE_FAILS = (f"tests.tune_faults:{n}" for n in ("steady", "crossing", "seed_one_fails"))


def settings(tmp_path, **kw) -> TuneSettings:
    """A tiny study of 60-step trials (the stand-ins train at once), study seed 0: confirmation seeds 1 and 2."""
    base = dict(trials=4, budget=Budget(60, "steps"), references=(), data=CORPUS, device="cpu",
                results=tmp_path / "results", study_name="c", space_overrides=TINY_SPACE, progress=False, seed=0,
                confirm=2, confirm_rule="all", save_models=False, heartbeat_interval=1, grace_period=4)
    return TuneSettings.of(**{**base, **kw})


def runs_of(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's own rows and the confirmation runs' rows."""
    return df[df["confirm_of"].isna()], df[df["confirm_of"].notna()]


def pairs(study: optuna.Study) -> list[tuple[str, int]]:
    """(configuration, run) of every confirmation trial, failed ones included."""
    return [(t.user_attrs.get("confirm_of"), t.user_attrs.get("confirm_run")) for t in load_confirms(study).trials]


# --- whole studies ------------------------------------------------------------------------------------


def test_the_top_k_run_again_with_fresh_seeds_do_not_count_and_a_resume_runs_none_again(tmp_path, capsys):
    out = run_study(settings(tmp_path), target=STEADY)
    assert out.ran == 4 and len(out.study.trials) == 4  # the re-runs neither count nor reach the sampler
    df = trials_frame(out.study)
    tried, runs = runs_of(df)
    assert len(tried) == 4 and (tried["status"] == "ok").all()
    top = tried.nsmallest(2, "val_loss")
    assert sorted(runs["confirm_of"].unique()) == sorted(f"trial {n}" for n in top["number"])
    assert len(runs) == 4 and (runs["status"] == "ok").all() and runs["number"].isna().all()
    for name, group in runs.groupby("confirm_of"):
        original = tried[tried["number"] == int(name.split()[1])].iloc[0]
        assert sorted(group["confirm_run"]) == [1, 2] and sorted(group["confirm_seed"]) == [1, 2]
        for _, run in group.iterrows():  # the same configuration; the seed reached the training
            assert run["learning_rate"] == original["learning_rate"] and run["n_embed"] == original["n_embed"]
            assert run["val_loss"] == pytest.approx(original["val_loss"] + 1e-4 * run["confirm_seed"])
    first = int(top.iloc[0]["number"])
    assert {f"confirm trial {first} #1", f"confirm trial {first} #2"} <= set(readable(df)["trial"])
    csv = pd.read_csv(out.results_dir / "trials.csv")
    assert len(csv) == 8 and csv["confirm_of"].notna().sum() == 4
    logs = {p.name for p in (out.results_dir / "logs").iterdir()}
    assert {f"confirm_trial_{int(n):04d}_{r}.log" for n in top["number"] for r in (1, 2)} <= logs

    prov = json.loads((out.results_dir / "best.json").read_text())["provenance"]
    conf = prov["confirmation"]
    assert prov["trial"] == first and conf["single_run_winner"] == first
    assert conf["differs_from_single_run_winner"] is False and conf["n_runs"] == 3 and conf["seeds"] == [0, 1, 2]
    assert conf["mean"] == pytest.approx(top.iloc[0]["val_loss"] + 1e-4) and conf["within_noise_of"] == []
    summary = (out.results_dir / "summary.md").read_text()
    assert "## Confirmation" in summary and "also the single-run winner" in summary
    assert "does not overlap the runner-up's" in summary and "within noise" not in summary
    assert "+ 4 for confirmation runs" in capsys.readouterr().out  # the plan counted them

    again = run_study(settings(tmp_path), target=STEADY)
    assert again.ran == 0 and len(load_confirms(again.study).trials) == 4
    assert "confirmation runs" not in capsys.readouterr().out  # nothing left to plan

    # More trials: a new top configuration is confirmed then; no run is ever repeated.
    more = run_study(settings(tmp_path, trials=7), target=STEADY)
    tried, runs = runs_of(trials_frame(more.study))
    done = pairs(more.study)
    assert len(done) == len(set(done)) and (runs["status"] == "ok").all()
    for n in tried.nsmallest(2, "val_loss")["number"]:
        assert {(f"trial {n}", 1), (f"trial {n}", 2)} <= set(done)


def test_the_best_mean_wins_and_may_differ_from_the_single_run_winner(tmp_path):
    out = run_study(settings(tmp_path, confirm=3), target=CROSSING)
    tried, _ = runs_of(trials_frame(out.study))
    top = tried.nsmallest(3, "val_loss")  # val_loss = L in the first run; the mean over seeds 0-2 is 2 - L
    single, expected = top.iloc[0], top.iloc[-1]
    assert single["number"] != expected["number"]
    best = json.loads((out.results_dir / "best.json").read_text())
    prov, conf = best["provenance"], best["provenance"]["confirmation"]
    assert prov["trial"] == int(expected["number"]) and conf["single_run_winner"] == int(single["number"])
    assert conf["differs_from_single_run_winner"] is True
    assert best["train"]["learning_rate"] == pytest.approx(expected["learning_rate"])
    base = expected["val_loss"]
    values = [base, 2 - base, 4 - 3 * base]
    assert conf["mean"] == pytest.approx(2 - base) and conf["sd"] == pytest.approx(statistics.stdev(values))
    assert (conf["min"], conf["max"]) == (pytest.approx(min(values)), pytest.approx(max(values)))
    assert conf["n_runs"] == 3 and len(conf["within_noise_of"]) == 2  # every range here spans the others
    summary = (out.results_dir / "summary.md").read_text()
    assert f"is not the single-run winner, trial {int(single['number'])}" in summary
    assert "within noise of each other" in summary and "not to be trusted" in summary
    assert f"Best at the target: **trial {int(expected['number'])}**, mean validation loss" in summary


def test_a_failed_confirmation_run_is_retried_once_and_its_configuration_cannot_win(tmp_path):
    out = run_study(settings(tmp_path, trials=3), target=SEED_ONE_FAILS)
    assert out.stopped_because is None
    confirms = load_confirms(out.study)
    sources = {t.user_attrs["confirm_of"] for t in confirms.trials}
    assert len(sources) == 2
    for source in sources:
        mine = [t for t in confirms.trials if t.user_attrs["confirm_of"] == source]
        first = [t for t in mine if t.user_attrs["confirm_run"] == 1]
        assert [t.state for t in first] == [TrialState.FAIL, TrialState.FAIL]  # tried, retried once, given up
        assert first[1].system_attrs["retry_history"] == [first[0].number]
        assert first[1].user_attrs["confirm_seed"] == 1 and first[1].user_attrs["status"] == "error"
        assert [t.state for t in mine if t.user_attrs["confirm_run"] == 2] == [TrialState.COMPLETE]
    tried, _ = runs_of(trials_frame(out.study))
    single = tried.nsmallest(1, "val_loss").iloc[0]
    # Both confirmed configurations failed a run: neither may win, so the third trial does, unconfirmed.
    unfailed = tried[[f"trial {int(n)}" not in sources for n in tried["number"]]]
    assert len(unfailed) == 1
    prov = json.loads((out.results_dir / "best.json").read_text())["provenance"]
    assert prov["trial"] == int(unfailed.iloc[0]["number"]) and "unconfirmed" in prov["confirmation"]["note"]
    assert prov["confirmation"]["single_run_winner"] == int(single["number"])
    assert prov["confirmation"]["differs_from_single_run_winner"] is True
    summary = (out.results_dir / "summary.md").read_text()
    assert summary.count("cannot win: a run failed") == 2 and "2 of 3 (#1 error)" in summary
    assert (f"the winner is the best single run of a configuration that did not fail one, trial "
            f"{int(unfailed.iloc[0]['number'])}") in summary and "failed a confirmation run" in summary


def test_confirm_0_runs_none(tmp_path, capsys):
    out = run_study(settings(tmp_path, trials=2, confirm=0), target=STEADY)
    assert confirm_study_name("c") not in optuna.get_all_study_names(out.study._storage)
    df = trials_frame(out.study)
    assert len(df) == 2 and df["confirm_of"].isna().all()
    assert "confirmation" not in json.loads((out.results_dir / "best.json").read_text())["provenance"]
    assert "## Confirmation" not in (out.results_dir / "summary.md").read_text()
    assert "confirmation" not in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_a_bad_confirm_value_is_one_line_exit_2_and_creates_nothing(value, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process (tests/conftest.py run_cli)
    code, _, err = run_cli("tune", ["--confirm", value, "--device", "cpu", "--results", str(tmp_path / "r"),
                                    "--no-progress"], capfd)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"argument --confirm: expected an integer >= 0, got '{value}'" in lines[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="--confirm must be 0 .off. or more, got -1"):
        run_study(settings(tmp_path, confirm=-1))
    assert not (tmp_path / "results").exists()


# --- several workers and tuners -----------------------------------------------------------------------


def test_two_workers_never_run_one_confirmation_run_twice(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (the two tuners below share one)")
    out = run_study(settings(tmp_path, workers=2), target=STEADY)
    done = pairs(out.study)
    assert len(done) == 4 and len(set(done)) == 4
    assert all(t.state == TrialState.COMPLETE for t in load_confirms(out.study).trials)


def test_two_tuners_on_one_journal_share_the_confirmation_runs_and_run_none_twice(tmp_path):
    """Two tuner processes on one study: each claim is made under the study lock, so each run is claimed once;
    a tuner that finds every run taken while some still train waits for them, then ends."""
    storage = f"journal:{tmp_path / 'study.journal'}"
    script = tmp_path / "tuner.py"  # the tuner's parent imports no test module (conftest imports torch)
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tune.core.budget import Budget
        from tune.search.settings import TuneSettings
        from tune.search.study import run_study
        if __name__ == "__main__":
            run_study(TuneSettings.of(trials=4, budget=Budget(60, "steps"), references=(), data=Path({str(CORPUS)!r}),
                                   device="cpu", results=Path(sys.argv[1]), study_name="c", storage={storage!r},
                                   space_overrides={TINY_SPACE!r}, progress=False, seed=0, confirm=2,
                                   confirm_rule="all", save_models=False, heartbeat_interval=1, grace_period=4),
                      target={STEADY!r})
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's tune, whatever the installed one is
    logs = [tmp_path / f"tuner{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"t{i}")], cwd=ROOT, env=env,
                              stdout=logs[i].open("w"), stderr=subprocess.STDOUT) for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], [log.read_text() for log in logs]
    study = optuna.load_study(study_name="c", storage=make_storage(resolve_storage(storage, tmp_path / "x.db")))
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4
    done = pairs(study)
    assert len(done) == 4 and len(set(done)) == 4, done
    assert all(t.state == TrialState.COMPLETE for t in load_confirms(study).trials)


# --- the rules, without training ----------------------------------------------------------------------


def test_claims_give_each_confirmation_run_once_then_wait_then_done():
    study, refs, confirms = (optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)) for _ in range(3))
    for value in (3.0, 1.0, 2.0):
        trial = study.ask()
        Space().suggest(trial)
        study.tell(trial, value)
    ref = refs.ask()
    ref.set_user_attr("reference", "tiny")
    refs.tell(ref, 0.5)
    claims = [dispatch.claim_confirm(study, refs, confirms, 2, seed=5) for _ in range(4)]
    assert [(c.confirm.source.name, c.confirm.run, c.confirm.seed) for c in claims] == [
        ("ref tiny", 1, 6), ("ref tiny", 2, 7), ("trial 1", 1, 6), ("trial 1", 2, 7)]
    assert claims[0].preset == "tiny" and claims[0].params == preset_params("tiny")
    assert claims[2].preset is None and claims[2].params == Space.decode(study.trials[1].params)
    assert not any(c.searched for c in claims)
    assert dispatch.claim_confirm(study, refs, confirms, 2, seed=5) == WAIT  # all taken; one may fail
    # A failed run is queued again (the tuner's tell does this) and comes back with its configuration and seed.
    confirms.tell(claims[2].trial, state=TrialState.FAIL)
    dispatch.requeue(confirms, confirms._storage.get_trial(claims[2].trial._trial_id))
    retry = dispatch.claim_confirm(study, refs, confirms, 2, seed=5)
    assert (retry.confirm.source.name, retry.confirm.run, retry.confirm.seed) == ("trial 1", 1, 6)
    assert retry.retry_of == claims[2].trial.number and retry.params == claims[2].params
    for c in (claims[0], claims[1], claims[3], retry):
        confirms.tell(c.trial, 1.0)
    assert dispatch.claim_confirm(study, refs, confirms, 2, seed=5) == DONE
    assert dispatch.confirm_runs_pending(study, refs, confirms, 2) == 0
    assert dispatch.confirm_runs_pending(study, refs, confirms, 3) == 2  # trial 2 would be next
    study.ask()  # a trial runs again (a resumed study): it may yet join the top
    assert dispatch.claim_confirm(study, refs, confirms, 3, seed=5) == WAIT


def test_a_confirmation_job_trains_the_same_configuration_with_its_seed_and_keeps_no_model(tmp_path):
    budget = Budget(10, "s")
    session = Session(TuneSettings.of(save_models=True), None, None, Space(), {"device": "cpu"}, {"vocab_size": 80},
                      tmp_path / "data", tmp_path / "r", "float32", None, budget, RungPlan.for_budget(budget), [],
                      (), None)
    params = {"batch_size": 8, "block_size": 32, "n_embed": 128, "n_head": 4, "n_layer": 2, "learning_rate": 1e-3}
    slot = Slot(0, (0,))
    _, original, _ = job_for(session, Claim(SimpleNamespace(number=7), params=params), slot)
    label, job, used = job_for(session, Claim(None, params=params, confirm=Confirm(Source(7, None, params), 2, 9)),
                               slot)
    assert label == "confirm_trial_0007_2" and used == params and job.log.endswith("confirm_trial_0007_2.log")
    assert original.checkpoint and job.checkpoint is None  # best-model/ is always an original run's
    assert job.model == original.model == trial_configs(params, session)[0]
    assert job.train == {**original.train, "seed": 9} and original.train["seed"] == 0
    ref = Source(None, "tiny", preset_params("tiny"))
    label, job, used = job_for(session, Claim(None, preset="tiny", params=ref.params, confirm=Confirm(ref, 1, 1)),
                               slot)
    model, train = reference_configs("tiny", session)
    assert label == "confirm_ref_tiny_1" and job.model == model and job.train == {**train, "seed": 1}


def frame(rows: list[dict]) -> pd.DataFrame:
    """A trials frame from a few rows, as trials_frame would give it."""
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def test_a_configuration_with_a_failed_run_cannot_win_and_pending_ones_are_not_judged():
    def run(of: str, k: int, status: str, loss: float | None) -> dict:
        return {"confirm_of": of, "confirm_run": k, "confirm_seed": k, "status": status, "val_loss": loss}

    df = frame([
        {"number": 0, "status": "ok", "val_loss": 1.0}, {"number": 1, "status": "ok", "val_loss": 1.1},
        {"number": 2, "status": "ok", "val_loss": 1.15}, {"number": 3, "status": "ok", "val_loss": 1.6},
        # trial 0: the best single run and the best mean of the runs that succeeded, but one diverged
        run("trial 0", 1, "ok", 1.0), run("trial 0", 2, "diverged", None),
        run("trial 1", 1, "ok", 1.2), run("trial 1", 2, "ok", 1.3),
        run("trial 2", 1, "error", None), run("trial 2", 2, "ok", 1.16), run("trial 2", 1, "queued", None),
    ])
    winner = choose_winner(df, {"objective": "loss", "confirm_runs": 2})
    assert int(winner.single["number"]) == 0 and int(winner.row["number"]) == 1
    table = winner.table.set_index("configuration")
    assert table.loc["trial 0", "state"] == "failed" and table.loc["trial 0", "failed"] == "#2 diverged"
    assert table.loc["trial 2", "state"] == "pending" and table.loc["trial 2", "pending"] == 1  # a retry queued
    line = table.loc["trial 1"]
    assert (line["state"], line["n"], line["min"], line["max"]) == ("complete", 3, 1.1, 1.3)
    assert line["mean"] == pytest.approx(1.2) and line["sd"] == pytest.approx(0.1)
    text = "\n".join(confirmation_section(winner, "loss"))
    assert "| trial 0 | 2 of 3 (#2 diverged) |" in text and "cannot win: a run failed" in text
    assert "| trial 1 | 3 of 3 | 1.2000 ± 0.1000 | 1.1000..1.3000 | **winner** |" in text and "not judged yet" in text
    assert "is not the single-run winner, trial 0" in text and "within noise" not in text


def test_overlapping_ranges_are_called_noise_and_separate_ones_are_not():
    def study(second: list[float]) -> str:
        df = frame([{"number": 0, "status": "ok", "val_loss": 1.0}, {"number": 1, "status": "ok", "val_loss": 1.1},
                    *({"confirm_of": "trial 0", "confirm_run": k, "status": "ok", "val_loss": v}
                      for k, v in ((1, 1.02), (2, 1.04))),
                    *({"confirm_of": "trial 1", "confirm_run": k, "status": "ok", "val_loss": v}
                      for k, v in zip((1, 2), second))])
        winner = choose_winner(df, {"objective": "loss"})
        assert int(winner.row["number"]) == 0
        return "\n".join(confirmation_section(winner, "loss"))

    assert "within noise of each other" in study([1.03, 1.12])  # trial 1's 1.03 falls inside 1.0..1.04
    assert "does not overlap the runner-up's, trial 1 (1.1000..1.1200)" in study([1.11, 1.12])


# --- sequential confirmation (--confirm-rule sequential, the default) ----------------------------------------


def test_sequential_confirms_the_best_once_then_only_while_naming_it_could_cost_more_than_settled():
    runs = {"a": [1.00], "b": [1.20], "c": [1.30]}
    assert next_confirmation(runs, {"a": 0, "b": 0, "c": 0}, 2) == "a"  # the first run measures the noise
    runs["a"].append(1.02)
    assert next_confirmation(runs, {"a": 1, "b": 0, "c": 0}, 2) is None  # a lead of 0.19: b cannot be better
    close = {"a": [1.00, 1.02], "b": [1.01]}
    assert next_confirmation(close, {"a": 1, "b": 0}, 2) == "b"  # a tie on one run of b: the one known less
    close["b"].append(1.01)
    assert next_confirmation(close, {"a": 1, "b": 1}, 2) is None  # still a tie, the noise measured: either will do
    noisy = {"a": [1.00, 1.10], "b": [1.02, 1.08]}
    assert next_confirmation(noisy, {"a": 1, "b": 1}, 2) in ("a", "b")  # a tie in noise of 0.05: not settled
    assert next_confirmation(noisy, {"a": 2, "b": 2}, 2) is None  # the cap is spent
    assert next_confirmation({"a": [1.0, 1.1]}, {"a": 1}, 2) is None  # nothing it could lose to
    assert next_confirmation({}, {}, 2) is None


def test_the_choice_loss_is_the_normal_loss_function_of_the_lead():
    # E[max(0, -d)] for d ~ N(lead, se^2): se / sqrt(2 pi) at a tie, ~0 for a lead of many se, -lead when behind.
    assert choice_loss(0.0, 0.03) == pytest.approx(0.03 / math.sqrt(2 * math.pi))
    assert choice_loss(0.3, 0.03) < 1e-20 and choice_loss(-0.3, 0.03) == pytest.approx(0.3)
    assert choice_loss(0.02, 0.03) < choice_loss(0.0, 0.03) < choice_loss(0.0, 0.06)
    assert choice_loss(0.02, 0.0) == 0.0 and choice_loss(-0.02, 0.0) == pytest.approx(0.02)
    assert SETTLED < choice_loss(0.0, PRIOR_NOISE * math.sqrt(2))  # two single runs in the prior noise: not settled


def test_the_noise_is_the_prior_until_the_study_measures_its_own():
    assert pooled_noise({"a": [1.0]}) == pytest.approx(PRIOR_NOISE)
    measured = pooled_noise({"a": [1.0, 1.2], "b": [2.0, 2.2], "c": [3.0, 3.2], "d": [0.5, 0.7]})
    assert PRIOR_NOISE < measured < statistics.stdev([1.0, 1.2])  # 4 pairs of sd 0.141 outweigh the prior


def sequential_studies(values: list[float]) -> tuple[optuna.Study, optuna.Study]:
    """A study with these losses at the target whose settings ask for sequential confirmation, and its
    confirmation study."""
    study, confirms = (optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)) for _ in range(2))
    study.set_user_attr("settings", {"confirm_rule": "sequential", "objective": "loss"})
    for value in values:
        trial = study.ask()
        Space().suggest(trial)
        study.tell(trial, value)
    return study, confirms


def test_sequential_claims_wait_for_the_run_that_decides_and_stop_once_the_lead_is_clear():
    study, confirms = sequential_studies([1.5, 1.0, 1.6])
    first = dispatch.claim_confirm(study, None, confirms, 2, seed=5)
    assert (first.confirm.source.name, first.confirm.run) == ("trial 1", 1)
    assert dispatch.claim_confirm(study, None, confirms, 2, seed=5) == WAIT  # its figure decides what comes next
    confirms.tell(first.trial, 1.01)
    assert dispatch.claim_confirm(study, None, confirms, 2, seed=5) == DONE  # 1.005 against 1.5: settled
    assert dispatch.next_confirm_run(study, None, confirms, 2) is None


def test_sequential_claims_confirm_the_runner_up_when_the_lead_is_within_the_noise():
    study, confirms = sequential_studies([1.02, 1.0, 1.6])
    first = dispatch.claim_confirm(study, None, confirms, 2, seed=5)
    confirms.tell(first.trial, 1.035)  # trial 1: mean 1.0175 against trial 0's 1.02, a tie in the noise
    second = dispatch.claim_confirm(study, None, confirms, 2, seed=5)
    assert (second.confirm.source.name, second.confirm.run, second.confirm.seed) == ("trial 0", 1, 6)


def test_rule_all_and_a_study_recorded_before_the_rule_confirm_every_run():
    study, confirms = sequential_studies([1.5, 1.0, 1.6])
    study.set_user_attr("settings", {"objective": "loss"})  # no confirm_rule: recorded before it existed
    claims = [dispatch.claim_confirm(study, None, confirms, 2, seed=5) for _ in range(4)]
    assert [(c.confirm.source.name, c.confirm.run) for c in claims] == [
        ("trial 1", 1), ("trial 1", 2), ("trial 0", 1), ("trial 0", 2)]


def test_a_configuration_confirmed_once_by_the_sequential_rule_is_complete_and_wins():
    df = frame([{"number": 0, "status": "ok", "val_loss": 1.0}, {"number": 1, "status": "ok", "val_loss": 1.5},
                {"confirm_of": "trial 0", "confirm_run": 1, "confirm_seed": 1, "status": "ok", "val_loss": 1.02}])
    winner = choose_winner(df, {"objective": "loss", "confirm_runs": 2, "confirm_rule": "sequential"})
    line = winner.line
    assert int(winner.row["number"]) == 0 and (line["state"], line["n"], line["runs"]) == ("complete", 2, 2)
    assert line["mean"] == pytest.approx(1.01)
    # The same rows under rule all: a run is still to come, so nothing is confirmed yet.
    assert choose_winner(df, {"objective": "loss", "confirm_runs": 2}).line is None


def test_a_whole_study_confirms_in_the_order_the_sequential_rule_names(tmp_path):
    out = run_study(settings(tmp_path, confirm_rule="sequential"), target=STEADY)
    done = load_confirms(out.study).trials
    assert 1 <= len(done) <= 4
    values = {f"trial {t.number}": [t.value] for t in out.study.trials}
    top = sorted(values, key=lambda k: values[k][0])[:2]
    made = {k: 0 for k in top}
    for t in done:  # each run is the one the rule named, given the runs before it
        assert t.user_attrs["confirm_of"] == next_confirmation({k: values[k] for k in top}, made, 2)
        made[t.user_attrs["confirm_of"]] += 1
        values[t.user_attrs["confirm_of"]].append(t.value)
    assert next_confirmation({k: values[k] for k in top}, made, 2) is None
    best = json.loads((out.results_dir / "best.json").read_text())["provenance"]["confirmation"]
    winner = min(top, key=lambda k: sum(values[k]) / len(values[k]) if made[k] else math.inf)
    assert best["n_runs"] == len(values[winner]) and best["mean"] == pytest.approx(statistics.mean(values[winner]))
