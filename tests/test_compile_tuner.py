"""The tuner's trials book their compile time and share one compile cache per study."""

import pandas as pd

from tests.test_tune import settings
from tune.report.frame import trials_frame
from tune.search.study import run_study


def test_trials_record_compile_seconds_and_use_the_studys_compile_cache(tmp_path):
    out = run_study(settings(tmp_path, trials=2, study_name="cc"), target="tests.tune_compile_target:reports_cache")
    df = trials_frame(out.study)
    cache = out.results_dir / "compile-cache"
    assert (df["compile_seconds"] == 1.5).all()
    assert (df["compile"] == f"default: {cache}").all()  # every trial of the study was given the same cache
    csv = pd.read_csv(out.results_dir / "trials.csv")
    assert (csv["compile_s"] == 1.5).all()
    summary = (out.results_dir / "summary.md").read_text()
    assert "3 s compiling" in summary  # 2 trials x 1.5 s
