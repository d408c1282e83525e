"""`python -m tune --compile MODE`: every trial trains in the mode asked for, and the study records it."""

import json

import pandas as pd
import pytest

from gptcore.errors import UserError
from tests.conftest import CORPUS, run_cli
from tests.test_tune import settings
from tune.search.study import run_study


def test_the_compile_mode_reaches_every_trial_and_a_resume_in_another_mode_is_refused(tmp_path):
    out = run_study(settings(tmp_path, trials=2, compile="none"))
    df = pd.read_csv(out.results_dir / "trials.csv")
    configs = [json.loads(c) for c in df["config"]]
    assert len(configs) == 2 and {c["train"]["compile"] for c in configs} == {"none"}
    assert set(df["compile"].str.split(":").str[0]) == {"none"}  # what the trial's steps really ran in
    assert out.study.user_attrs["settings"]["compile"] == "none"
    assert "compile none" in (out.results_dir / "summary.md").read_text()
    with pytest.raises(UserError, match="compile: 'none' -> 'auto'"):
        run_study(settings(tmp_path, trials=3))  # auto would let each trial choose: another question


def test_compile_graphs_on_the_cpu_is_refused_in_one_line_and_nothing_is_created(tmp_path, capfd):
    results = tmp_path / "r"
    code, _, err = run_cli("tune", ["--device", "cpu", "--compile", "graphs", "--trials", "1", "--data", str(CORPUS),
                                    "--results", str(results)], capfd)
    assert code == 2 and err.strip().splitlines() == [
        "python -m tune: error: --compile graphs needs a CUDA device (CUDA graphs), not cpu; use default, none or auto"]
    assert not results.exists()
