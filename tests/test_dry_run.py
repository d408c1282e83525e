"""--dry-run (#23.6): the plan, the space, the rungs, the cost floor and the predicted memory of a few sampled
configurations, then exit 0 with nothing of the study created."""

import pytest

from tests.conftest import CORPUS, run_cli
from tune.search import dryrun


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def few_samples(monkeypatch):
    monkeypatch.setattr(dryrun, "DRY_RUN_SAMPLES", 2)  # each is a traced trial process: two say as much as five


def test_dry_run_prints_the_plan_space_and_memory_and_creates_nothing(tmp_path, capfd, monkeypatch, few_samples):
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    code, out, err = run_cli("tune", ["--dry-run", "--trials", "3", "--budget", "60steps", "--device", "cpu",
                                      "--data", str(CORPUS), "--results", "r", "--references", "tiny",
                                      "--param", "dropout=0,0.3", "--param", "weight_decay=1e-3,0.3,log",
                                      "--memory-limit", "4GiB", "--no-progress"], capfd)
    assert code == 0, err
    assert files_under(tmp_path) == before and not (tmp_path / "r").exists()
    for needle in ("target: 60 steps of training per configuration", "rungs: 60 steps",
                   "expected training: about", "for the references tiny",
                   "epochs of the corpus per trial at the target", "| dropout | 0 .. 0.3 | uniform |",
                   "| weight_decay | 0.001 .. 0.3 | log-uniform |", "against the 4,096 MiB limit",
                   "nothing is created", "no study, results folder or file was created"):
        assert needle in out, (needle, out)
    predicted = [line for line in out.splitlines() if line.startswith("  ") and "predicted" in line]
    assert len(predicted) == 2 and all("dropout" in line and ": fits" in line for line in predicted), out


def test_a_configuration_over_the_limit_is_said_to_be_skipped(tmp_path, capfd, monkeypatch, few_samples):
    monkeypatch.chdir(tmp_path)
    from tune.exec.runner import TrialRunner

    baseline = TrialRunner().probe("cpu")["vm_data_bytes"]  # a limit just above what a trial needs to start
    limit = f"{(baseline + 200 * 2**20) // 2**20}MiB"
    code, out, err = run_cli("tune", ["--dry-run", "--trials", "1", "--budget", "20steps", "--device", "cpu",
                                      "--data", str(CORPUS), "--results", "r", "--references", "none",
                                      "--batch-size", "256", "--block-size", "256", "--n-embed", "512",
                                      "--n-layer", "4", "--memory-limit", limit, "--no-progress"], capfd)
    assert code == 0, err
    assert out.count("a run would skip it") == 2, out
    assert not (tmp_path / "r").exists()


def test_a_bad_flag_in_a_dry_run_is_one_line_exit_2_and_nothing_created(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("tune", ["--dry-run", "--device", "cpu", "--results", "r", "--param",
                                    "dropout=0,1"], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--param dropout: dropout 1" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_dry_run_with_a_time_budget_runs_the_throughput_probe_a_run_would(tmp_path, capfd, monkeypatch,
                                                                           few_samples):
    """The epochs per trial are what a dry run is for: it probes the throughput where the run would (a study whose
    training is long enough to pay for the probe), in a trial process whose log is gone afterwards."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("tune", ["--dry-run", "--trials", "1", "--budget", "5m", "--device", "cpu",
                                      "--data", str(CORPUS), "--results", "r", "--references", "none",
                                      "--confirm", "0", "--no-progress"], capfd)
    assert code == 0, err
    assert "throughput probe" in out and "epochs of the corpus per trial at the target: about" in out, out
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []
