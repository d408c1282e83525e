"""#22.2 anytime answers: best.json, best-model/ and summary.md hold the answer so far at every moment of a study,
and --max-time stops claiming new runs once its wall-clock cap has passed."""

from __future__ import annotations

import json

import pytest

import tune.search.study as study_mod
from tests.test_tune import STEADY, settings
from tune.__main__ import max_time_flag


class Clock:
    """A monotonic clock that jumps far ahead once it has been read `reads` times."""

    def __init__(self, reads: int) -> None:
        self.reads, self.calls = reads, 0

    def __call__(self) -> float:
        self.calls += 1
        return 0.0 if self.calls <= self.reads else 1e9


def test_max_time_stops_claiming_and_leaves_the_answer_so_far(tmp_path, monkeypatch, capsys):
    # Read once to set the deadline, once before the first claim: the second claim comes after the cap.
    monkeypatch.setattr(study_mod, "now", Clock(reads=2))
    outcome = study_mod.run_study(settings(tmp_path, trials=4, max_time=60.0), target=STEADY)
    assert outcome.time_up and not outcome.interrupted and outcome.stopped_because is None
    counted = [t for t in outcome.study.trials if t.user_attrs.get("status") == "ok"]
    assert len(counted) == 1  # the run started before the cap finished and counted; none started after it
    folder = outcome.results_dir
    best = json.loads((folder / "best.json").read_text())
    assert best["provenance"]["trial"] == counted[0].number
    summary = (folder / "summary.md").read_text()
    assert "**The answer so far**: 1 of 4 trials counted" in summary
    err = capsys.readouterr().out
    assert "--max-time 1 min reached: no new run starts" in err and "stopped with 1 of 4 trial(s) counted" in err


def test_a_resume_without_the_cap_finishes_the_study_and_the_summary_says_it_is_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(study_mod, "now", Clock(reads=2))
    study_mod.run_study(settings(tmp_path, trials=3, max_time=60.0), target=STEADY)
    monkeypatch.setattr(study_mod, "now", Clock(reads=10**9))
    outcome = study_mod.run_study(settings(tmp_path, trials=3), target=STEADY)
    assert not outcome.time_up
    assert sum(t.user_attrs.get("status") == "ok" for t in outcome.study.trials) == 3
    assert "The answer so far" not in (outcome.results_dir / "summary.md").read_text()


def test_best_json_is_written_as_soon_as_a_run_reaches_the_target_not_only_at_the_end(tmp_path, monkeypatch):
    seen = []  # at each claim: the trial best.json names, if any
    real = study_mod.claim_next

    def claim_and_look(tuner, slot):
        path = tuner.session.results_dir / "best.json"
        seen.append(json.loads(path.read_text())["provenance"]["trial"] if path.exists() else None)
        return real(tuner, slot)

    monkeypatch.setattr(study_mod, "claim_next", claim_and_look)
    outcome = study_mod.run_study(settings(tmp_path, trials=3), target=STEADY)
    values = {t.number: t.value for t in outcome.study.trials}
    assert seen[0] is None  # nothing ran yet
    # Before each later claim, best.json already names the best run so far (a kill -9 then would leave it).
    for k, named in enumerate(seen[1:4], start=1):
        assert named == min(range(k), key=values.__getitem__)


@pytest.mark.parametrize("text", ["45m", "2h", "1h30m", "90s", "90"])
def test_max_time_takes_a_duration(text):
    assert max_time_flag(text) == {"45m": 2700, "2h": 7200, "1h30m": 5400, "90s": 90, "90": 90}[text]


def test_max_time_refuses_steps_and_nonsense_in_one_line(tmp_path, capfd):
    from tests.conftest import run_cli

    for bad in ("500steps", "soon", "-5m", "0"):
        code, _, err = run_cli("tune", ["--max-time", bad, "--results", str(tmp_path / "r")], capfd)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--max-time" in err, err
    assert not (tmp_path / "r").exists()


def test_the_time_split_books_each_kind_of_run_in_seconds_and_target_budgets():
    import pandas as pd

    from tune.report.summary import time_split

    df = pd.DataFrame({
        "status": ["ok", "pruned", "pruned", "oom", "ok", "ok", "ok", "queued", "running"],
        "reference": [None, None, None, None, "baby", None, None, "tiny", None],
        "confirm_of": [None, None, None, None, None, "trial 0", "trial 0", None, None],
        "trial_seconds": [20.0, 5.0, 5.0, 2.0, 20.0, 20.0, 20.0, None, None],  # queued and running: no time yet
    })
    line = time_split(df, {"budget_amount": 20, "budget_unit": "s"}, wall=100.0)
    assert line == ("- where the time went of 1 min 40 s (5.0 target budgets): 20 s (1.0 target budgets) in 1 "
                    "trial(s) that reached the target, 10 s (0.5 target budgets) in 2 pruned trial(s), 2 s (0.1 "
                    "target budgets) in 1 trial(s) that failed or were cut short, 20 s (1.0 target budgets) in 1 "
                    "run(s) of reference presets, 40 s (2.0 target budgets) in 2 confirmation run(s); 8 s between "
                    "runs (the tuner's own work)")
    steps = time_split(df, {"budget_amount": 500, "budget_unit": "steps"}, wall=50.0)  # overlapping workers
    assert "target budgets" not in steps and "between runs" not in steps and "in 2 confirmation run(s)" in steps
