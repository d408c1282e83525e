"""The tuner's memory judgement: skip what is predicted not to fit, tell Optuna a memory constraint, report it."""

import pandas as pd
import pytest

from gptcore.memory import Calibration
from tests.test_tune import settings
from tune.exec.runner import TrialRunner
from tune.memory.judge import SKIP_MARGIN, Verdict, limit_for, violation_mib
from tune.report.frame import trials_frame
from tune.search.study import run_study

MiB = 2**20
# One configuration each: far over a limit of baseline + 150 MiB, or far under it.
HUGE = {"batch_size": 64, "block_size": 128, "n_embed": 1024, "n_head": 1, "n_layer": 4, "learning_rate": 1e-3}
SMALL = {"batch_size": 2, "block_size": 8, "n_embed": 64, "n_head": 1, "n_layer": 1, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def limit():
    return TrialRunner().probe("cpu")["vm_data_bytes"] + 150 * MiB


def test_a_configuration_predicted_over_the_limit_is_skipped_and_infeasible(tmp_path, limit):
    out = run_study(settings(tmp_path, trials=2, space_overrides=HUGE, memory_limit=limit))
    df = trials_frame(out.study)
    assert (df["status"] == "predicted_oom").all()
    assert df["steps"].isna().all() and (df["predicted_peak_bytes"] > limit * (1 + SKIP_MARGIN)).all()
    assert (df["mem_traced_bytes"] > 0).all() and (df["mem_limit_bytes"] == limit).all()
    for t in out.study.trials:
        assert t.state.name == "PRUNED" and t.constraints["memory_MiB"] > 0  # infeasible, by how far it is over
    summary = (out.results_dir / "summary.md").read_text()
    assert "## Memory: predicted and measured" in summary and "2 skipped, 0 ran out of memory" in summary
    assert "predicted_oom" in (out.results_dir / "trials.csv").read_text()
    assert (out.results_dir / "memory.png").stat().st_size > 0


def test_no_predict_runs_it_anyway_and_it_runs_out_of_memory(tmp_path, limit):
    out = run_study(settings(tmp_path, trials=1, space_overrides=HUGE, memory_limit=limit, predict=False))
    row = trials_frame(out.study).iloc[0]
    assert row["status"] == "oom" and row["predicted_peak_bytes"] > limit  # predicted, recorded, not acted on
    assert out.study.trials[0].constraints["memory_MiB"] > 0


def test_a_trial_that_fits_is_feasible_and_teaches_the_calibration(tmp_path, limit):
    out = run_study(settings(tmp_path, trials=2, space_overrides=SMALL, memory_limit=limit, trial_seconds=1))
    df = trials_frame(out.study)
    assert (df["status"] == "ok").all()
    assert (df["measured_peak_bytes"] <= limit).all() and (df["predicted_peak_bytes"] > df["mem_baseline_bytes"]).all()
    assert all(t.constraints["memory_MiB"] <= 0 for t in out.study.trials)
    # The second trial was predicted with what the first measured: its overhead beyond the tensors.
    assert df["mem_overhead_bytes"].iloc[0] == 0 and df["mem_overhead_bytes"].iloc[1] > 0
    assert Calibration.from_dict(out.study.user_attrs["memory_calibration"]).points == 1
    summary = (out.results_dir / "summary.md").read_text()
    assert "prediction error |predicted - measured| / measured over 2 trial(s)" in summary
    assert "fitted on all 2 measured run(s)" in summary  # the report refits on every record
    assert (df["mem_resident_bytes"] > 0).all() and (df["mem_resident_bytes"] < df["mem_traced_bytes"]).all()


def test_without_a_limit_no_step_is_traced_and_the_summary_says_why(tmp_path):
    # A CPU study without --memory-limit: no verdict could skip anything, so no trial spends ~1 s tracing.
    out = run_study(settings(tmp_path, trials=1, space_overrides=SMALL, trial_seconds=1))
    row = trials_frame(out.study).iloc[0]
    assert row["status"] == "ok" and row["measured_peak_bytes"] > 0
    for key in ("mem_traced_bytes", "predicted_peak_bytes", "mem_predict_seconds", "mem_limit_bytes"):
        assert pd.isna(row.get(key)), key  # not recorded
    summary = (out.results_dir / "summary.md").read_text()
    assert "no step was traced: without a limit" in summary and "predicted and measured" not in summary

def test_verdict_skips_only_past_the_margin_and_only_when_allowed():
    memory = {"peak_bytes": 1000 * MiB, "baseline_bytes": 100 * MiB}
    cal = Calibration()
    assert Verdict.judge(memory, cal, 1000 * MiB, skip=True) == Verdict(1100 * MiB, False)  # near: run it
    assert Verdict.judge(memory, cal, 900 * MiB, skip=True).skip
    assert not Verdict.judge(memory, cal, 900 * MiB, skip=False).skip
    assert Verdict.judge(memory, cal, None, skip=True) == Verdict(1100 * MiB, False)  # no limit, nothing to skip
    assert Verdict.judge(None, cal, 900 * MiB, skip=True) == Verdict(None, False)  # no trace: run it


def test_the_constraint_is_the_excess_over_the_limit():
    limit = 1000 * MiB
    assert violation_mib("predicted_oom", {"predicted_peak_bytes": 1500 * MiB}, limit) == 500
    assert violation_mib("oom", {"oom_requested_bytes": 20 * MiB, "predicted_peak_bytes": 900 * MiB}, limit) == 20
    assert violation_mib("oom", {}, limit) == 1  # an OOM is infeasible even with nothing to measure it by
    assert violation_mib("ok", {"measured_peak_bytes": 600 * MiB}, limit) == -400
    assert violation_mib("ok", {"measured_peak_bytes": 1001 * MiB}, limit) == 0  # it trained: it fitted
    assert violation_mib("ok", {"measured_peak_bytes": 600 * MiB}, None) is None
    assert violation_mib("error", {}, limit) is None


def test_the_limit_is_the_flag_else_the_card_less_its_context():
    assert limit_for(5 * MiB, {"device_type": "cpu"}) == 5 * MiB
    assert limit_for(None, {"device_type": "cpu"}) is None
    assert limit_for(None, {"device_type": "cuda", "gpu_memory_bytes": 8192 * MiB}) == 7680 * MiB


def test_a_study_refuses_to_resume_under_another_memory_limit(tmp_path, limit):
    from gptcore.errors import UserError

    run_study(settings(tmp_path, trials=1, space_overrides=HUGE, memory_limit=limit))
    with pytest.raises(UserError, match=r"memory_limit: \d+ -> \d+"):
        run_study(settings(tmp_path, trials=2, space_overrides=HUGE, memory_limit=limit + 64 * MiB))
