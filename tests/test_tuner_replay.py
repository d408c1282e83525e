"""The tuner replay benchmark: recorded tables, nearest lookups, replayed studies, the command."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.__main__ import main
from benchmarks.tuner_replay import DEFAULT, TODAY, Strategy, compare, replay, summarise
from benchmarks.tuner_table import DEFAULT_TABLE, KEEP, load_table
from gptcore.cliutil import run
from tests.test_tune import TINY_SPACE
from tune.core.budget import RungPlan
from tune.core.space import PARAMS, Space
from tune.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER

RUNGS = [1 / 9, 1 / 3, 1.0]


def synthetic_table(folder, budget_s: float = 12.0, diverged_lr: float | None = None):
    """Every configuration of a small grid, with a smooth loss that is lowest at lr 1e-3, 2 layers, embed 128;
    curves that fall towards the final value, so early rungs rank configurations roughly as the target does."""
    space = Space(batch_size=(4, 8), block_size=(16, 32), n_embed=(64, 128), n_head=(1, 2), n_layer=(1, 2))
    rows = []
    lrs = [1e-4, 3e-4, 1e-3, 3e-3]
    for n, (b, t, e, h, layers, lr) in enumerate(itertools.product((4, 8), (16, 32), (64, 128), (1, 2), (1, 2), lrs)):
        final = 2.0 + 0.3 * abs(math.log10(lr) + 3) + 0.1 * (layers != 2) + 0.05 * (e != 128) + 0.01 * (b == 4)
        status = "diverged" if diverged_lr is not None and lr >= diverged_lr else "ok"
        curve = [final + 0.6, final + 0.2, final] if status == "ok" else [final + 0.6, math.nan, math.nan]
        rows.append({"number": n, "status": status, "batch_size": b, "block_size": t, "n_embed": e, "n_head": h,
                     "n_layer": layers, "learning_rate": lr, "val_loss": curve[-1], "tokens_per_s": 1000.0,
                     "steps": 100, "train_seconds": budget_s, "eval_seconds": 0.3, "warmup_seconds": 0.5,
                     "startup_seconds": 2.0, "trial_seconds": budget_s + 3.0, "peak_memory_bytes": 2**28,
                     "n_params": 10_000, "threads": 1,
                     **{f"loss_rung_{k + 1}": v for k, v in enumerate(curve)}})
    path = folder / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    meta = {"rows": len(rows), "device": "test", "threads_per_trial": 1, "budget_amount": budget_s, "budget_unit": "s",
            "rungs": RUNGS, "eta": 3, "space": space.to_dict(), "command": "synthetic"}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_nearest_finds_a_recorded_configuration_itself_and_snaps_the_learning_rate(tmp_path):
    table = load_table(synthetic_table(tmp_path))
    for i in (0, 17, len(table.frame) - 1):
        values = table.frame.loc[i, list(PARAMS)].to_dict()
        assert table.nearest(values) == i
    near = table.frame.loc[table.nearest({**table.frame.loc[5, list(PARAMS)].to_dict(), "learning_rate": 1.1e-3})]
    assert near["learning_rate"] == pytest.approx(1e-3)
    assert table.best == pytest.approx(2.0)


def test_without_pruning_every_trial_reaches_the_target_and_costs_a_whole_run(tmp_path):
    table = load_table(synthetic_table(tmp_path))
    r = replay(table, Strategy("random", "none"), seed=0, trials=20)
    per_trial = np.diff(np.concatenate([[0.0], r.clock]))
    # Start-up and warm-up (15 - 12 - 0.3 recorded), the training, and one of the 3 recorded evaluations per rung
    # of the default plan of a 12 s target.
    rungs = len(RungPlan.for_budget(table.budget).fractions)
    assert np.allclose(per_trial, 2.7 + 12.0 + 0.3 * rungs / 3)
    assert np.all(np.isfinite(r.best)) and np.all(np.diff(r.best) <= 0)  # the best so far never gets worse
    assert r.best[-1] >= table.best


def test_pruning_saves_time_on_the_same_proposals_and_never_finds_better(tmp_path):
    # Random search proposes the same configurations whatever the results: only the pruner differs.
    table = load_table(synthetic_table(tmp_path))
    full = replay(table, Strategy("random", "none", rungs=3), seed=3, trials=40)
    pruned = replay(table, Strategy("random", "asha", rungs=3), seed=3, trials=40)
    assert pruned.clock[-1] < 0.7 * full.clock[-1]
    assert pruned.best[-1] >= full.best[-1]
    # A trial pruned at the first rung costs its start-up and a ninth of the training, not a whole run.
    assert np.diff(pruned.clock).min() == pytest.approx(3.0 - 0.3 + 12.0 / 9 + 0.3 / 3)


def test_a_diverged_configuration_never_counts_as_reaching_the_target(tmp_path):
    table = load_table(synthetic_table(tmp_path, diverged_lr=1e-3))  # the best learning rate diverges here
    assert table.best == pytest.approx(2.0 + 0.3 * abs(math.log10(3e-4) + 3))
    r = replay(table, Strategy("random", "none"), seed=1, trials=30)
    assert r.best[-1] >= table.best - 1e-12


def test_fewer_trials_than_the_checkpoints_reads_regret_at_the_last_trial(tmp_path):
    table = load_table(synthetic_table(tmp_path))
    runs = compare(table, (TODAY,), seeds=2, trials=5)
    assert [c for c in runs.columns if c.startswith("regret_") and c[7:].isdigit()] == ["regret_5"]
    assert "vs today@5" in summarise(runs.drop(columns="curve")).columns


def test_hyperband_replays_the_same_study_twice():
    # Hyperband's brackets hash the study name: the replay names its studies, so a seed replays identically.
    table_path = DEFAULT_TABLE
    table = load_table(table_path)
    a, b = (replay(table, Strategy("tpe", "hyperband", 3), seed=4, trials=30) for _ in range(2))
    assert np.array_equal(a.clock, b.clock) and np.array_equal(a.best, b.best)


def test_the_replay_runs_the_tuners_own_defaults():
    assert (DEFAULT.sampler, DEFAULT.pruner) == (DEFAULT_SAMPLER, DEFAULT_PRUNER)
    assert TODAY.name == "tpe-startup10 + asha"


def test_comparison_reads_regret_at_checkpoints_and_time_to_within_one_percent(tmp_path):
    table = load_table(synthetic_table(tmp_path))
    runs = compare(table, (TODAY, Strategy("random", "none")), seeds=3, trials=25)
    assert len(runs) == 6 and (runs["regret_25"] >= 0).all() and (runs["regret_10"] >= runs["regret_25"]).all()
    reached = runs["budgets_to_1pct"][np.isfinite(runs["budgets_to_1pct"])]
    assert (reached <= runs.loc[reached.index, "clock_budgets"] + 1e-9).all()


def test_summary_takes_medians_per_strategy_and_ratios_to_todays_defaults():
    runs = pd.DataFrame({"strategy": [TODAY.name] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "regret_10": [0.4, 0.2, 0.3, 0.1, 0.05, 0.5], "budgets_10": [5.0] * 6,
                         "budgets_to_1pct": [3.0, math.inf, 5.0, 1.0, 2.0, 4.0], "clock_budgets": [6.0] * 6,
                         **{f"regret_at_{t}b": [0.1] * 6 for t in (10, 20, 40)}})
    s = summarise(runs).set_index("strategy")
    assert s.loc[TODAY.name, "regret@10"] == pytest.approx(0.3) and s.loc["b", "regret@10"] == pytest.approx(0.1)
    assert s.loc["b", "vs today@10"] == pytest.approx(0.1 / 0.3)
    assert s.loc[TODAY.name, "reached 1%"] == "2/3" and s.loc["b", "budgets to 1%"] == pytest.approx(2.0)
    assert list(s.index) == ["b", TODAY.name]  # best first


def test_the_shipped_table_loads_and_its_best_is_a_configuration_that_reached_the_target():
    table = load_table(DEFAULT_TABLE)
    assert len(table.frame) >= 150 and set(KEEP) <= set(table.frame.columns)
    ok = table.frame[table.frame["status"] == "ok"]
    assert table.best == ok["val_loss"].min()
    final = f"loss_rung_{len(table.fractions)}"
    assert np.allclose(ok[final], ok["val_loss"], atol=1e-4)  # the last rung is the target
    assert json.loads(DEFAULT_TABLE.with_suffix(".json").read_text())["command"].startswith("python -m benchmarks")


def test_replay_command_writes_its_table_summary_and_plot(tmp_path, capsys):
    path = synthetic_table(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run(main, ["tuner", "replay", "--table", str(path), "--seeds", "2", "--trials", "12", "--strategies",
                   "tpe+asha,random+none:3", "--out", str(out), "--no-progress"], prog="python -m benchmarks")
    assert info.value.code == 0, capsys.readouterr().err
    runs = pd.read_csv(out / "tuner_replay.csv")
    assert sorted(runs["strategy"].unique()) == sorted([TODAY.name, "tpe + asha", "random + none (3 rungs)"])
    assert "| strategy" in (out / "tuner_replay.md").read_text()
    assert (out / "tuner_replay.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, needle", [
    (["--strategies", "tpe+sha"], "argument --strategies: expected SAMPLER+PRUNER"),
    (["--strategies", "bayes+asha"], "argument --strategies: expected SAMPLER+PRUNER"),
    (["--seeds", "0"], "argument --seeds"),
    (["--table", "missing.csv"], "--table missing.csv: missing.csv does not exist"),
    (["--strategies", "tpe+asha:4"], "--strategies tpe + asha (4 rungs): a rung at 0.037 of the target, but the "
                                     "table recorded rungs at 0.111, 0.333, 1 only"),
    (["--strategies", "tpe+asha:0"], "argument --strategies: expected SAMPLER+PRUNER"),
])
def test_bad_replay_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys, monkeypatch):
    table = synthetic_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    if "--table" not in argv:
        argv = [*argv, "--table", str(table)]
    with pytest.raises(SystemExit) as info:
        run(main, ["tuner", "replay", "--out", str(tmp_path / "o"), *argv], prog="python -m benchmarks")
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_record_runs_the_tuner_and_exports_every_rung_of_every_trial(tmp_path, prepared):
    from benchmarks.tuner_table import RecordSettings, record

    out = tmp_path / "table.csv"
    space = tmp_path / "space.json"  # tiny models: the test checks the recording's bookkeeping, not the space
    space.write_text(json.dumps(TINY_SPACE))
    settings = RecordSettings(trials=3, budget="40steps", rungs=2, workers=1, seed=0, data=prepared,
                              results=tmp_path / "study", out=out, space=str(space))
    record(settings)
    table = load_table(out)
    assert len(table.frame) == 3 and set(table.frame["status"]) == {"ok"}
    assert table.fractions == (1 / 3, 1.0) and str(table.budget) == "40 steps"
    assert table.frame[["loss_rung_1", "loss_rung_2"]].notna().all().all()
    assert "--sampler random --pruner none" in table.meta["command"]


def test_record_flags_reach_the_tuner_command_line(tmp_path):
    from benchmarks.__main__ import build_parser
    from benchmarks.tuner_table import RecordSettings, record_command

    args = build_parser().parse_args(["tuner", "record", "--reduction-factor", "2", "--rungs", "4", "--budget", "1m",
                                      "--out", str(tmp_path)])
    cmd = " ".join(record_command(RecordSettings(budget=args.budget, rungs=args.rungs,
                                                 reduction_factor=args.reduction_factor, results=args.out)))
    assert "--budget 1m --rungs 4 --reduction-factor 2" in cmd and "--confirm 0" in cmd
    assert "--sampler random --pruner none" in cmd
