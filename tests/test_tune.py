"""The autotuner: search space, outcome classification, and whole (tiny, CPU) studies."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from gptcore.config import ModelConfig, from_dict
from gptcore.errors import Diverged, UserError
from tests.conftest import CORPUS, ROOT, ctrl_c_default, run_cli
from tune.__main__ import main, parse_size
from tune.core.budget import Budget, RungPlan
from tune.core.outcomes import classify, requested_bytes
from tune.core.space import SPACES, Space, load_space
from tune.report.frame import trials_frame
from tune.search.settings import TuneSettings
from tune.search.study import run_study

STEADY = "tests.tune_faults:steady"  # a stand-in trial for studies that check bookkeeping, not training
TINY_SPACE = {"batch_size": [2, 4], "block_size": [8, 16], "n_embed": [64, 64], "n_head": [1, 2],
              "n_layer": [1, 1], "learning_rate": [1e-3, 1e-2]}


def settings(tmp_path, **kw) -> TuneSettings:
    if "trial_seconds" in kw:
        kw["budget"] = Budget(kw.pop("trial_seconds"), "s")
    base = dict(trials=4, budget=Budget(0.5, "s"), references=(), data=CORPUS, device="cpu",
                results=tmp_path / "results", study_name="t", space_overrides=TINY_SPACE, progress=False, seed=1,
                confirm=0)  # confirmation runs: tests/test_confirm.py
    return TuneSettings.of(**{**base, **kw})


# --- search space -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPACES))
def test_every_suggestion_is_a_valid_config(name):
    space = SPACES[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(200):
        trial = study.ask()
        p = space.suggest(trial)
        ModelConfig(vocab_size=80, block_size=p["block_size"], n_embed=p["n_embed"], n_head=p["n_head"],
                    n_layer=p["n_layer"])  # raises if n_embed % n_head != 0
        for k in ("batch_size", "block_size", "n_head"):
            assert p[k] & (p[k] - 1) == 0
        assert p["n_embed"] % 64 == 0 and space.learning_rate[0] <= p["learning_rate"] <= space.learning_rate[1]
        study.tell(trial, 0.0)


def test_fixed_trial_gives_the_configs_a_trial_trains():
    trial = optuna.trial.FixedTrial({"log2(batch_size)": 3, "log2(block_size)": 5, "n_embed": 128,
                                     "log2(n_head)": 2, "n_layer": 2, "learning_rate": 1e-3})
    params = Space().suggest(trial)
    assert params == {"batch_size": 8, "block_size": 32, "n_embed": 128, "n_head": 4, "n_layer": 2,
                      "learning_rate": 1e-3}
    assert Space.decode(trial.params) == params  # what a row shows for a trial that never recorded anything
    from tune.search.session import Session, trial_configs

    session = Session(TuneSettings(), None, None, Space(), {"device": "cpu"}, {"vocab_size": 80}, None, None,
                      "float32", None, Budget(10, "s"), RungPlan.for_budget(Budget(10, "s")), [], (), None)
    model, train = trial_configs(params, session)
    m, t = from_dict({"model": model, "train": train})
    assert (m.n_head, t.batch_size, t.max_seconds, t.max_iters, t.learning_rate) == (4, 8, 10, None, 1e-3)
    assert m.dropout == 0.0 and t.eval_iters == 4 and t.eval_batch_size == 32 and not t.eval_train_split
    assert t.lr_decay == "cosine"  # the schedule runs to the target, in every trial as in best.json


def test_space_auto_file_and_overrides(tmp_path):
    assert load_space("auto", "cpu", None, {}) == SPACES["small"]
    assert load_space("auto", "cuda", 80 * 2**30, {}) == SPACES["large"]
    assert load_space("auto", "cuda", 8 * 2**30, {}) == SPACES["medium"]
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"base": "medium", "n_layer": [2, 3], "batch_size": 16}))
    s = load_space(str(f), "cpu", None, {"learning_rate": (1e-4, 1e-3)})
    assert (s.n_layer, s.batch_size, s.learning_rate, s.block_size) == ((2, 3), (16, 16), (1e-4, 1e-3),
                                                                         SPACES["medium"].block_size)
    for bad, needle in [({"batch_size": [3, 8]}, "powers of two"), ({"n_embed": [64, 100]}, "multiples of 64"),
                        ({"dropout": [0, 1]}, "unknown parameter"), ({"n_layer": [4, 2]}, "low <= high")]:
        with pytest.raises(UserError, match=needle):
            load_space("small", "cpu", None, bad)
    with pytest.raises(UserError, match="--space nope"):
        load_space("nope", "cpu", None, {})


# --- outcomes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("message, nbytes", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)", 2 * 2**30),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", None),
    ("Tried to allocate 512.00 MiB ... this would exceed allowed memory", 512 * 2**20),
    ("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 4194304 bytes.", 4194304),
    ("MPS backend out of memory", None),
])
def test_every_oom_form_is_an_oom(message, nbytes):
    exc = RuntimeError(message)
    exc.phase = "forward"
    out = classify(exc)
    assert (out.status, out.phase, out.requested_bytes) == ("oom", "forward", nbytes)
    assert requested_bytes(message) == nbytes


def test_torch_oom_type_divergence_and_errors():
    import torch

    assert classify(torch.OutOfMemoryError("x")).status == "oom"
    assert classify(MemoryError()).status == "oom"
    assert classify(Diverged(12, math.nan)).status == "diverged"
    out = classify(KeyError("missing"))
    assert out.status == "error" and out.message == "KeyError: 'missing'"


def test_train_tags_the_phase_of_an_exception(data, monkeypatch):
    from gptcore import train as train_mod

    def fail(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")

    monkeypatch.setattr(train_mod.torch.nn.utils, "clip_grad_norm_", fail)
    from gptcore.config import from_name

    m, t = from_name("tiny", device="cpu")
    with pytest.raises(RuntimeError) as info:
        train_mod.train(m.with_vocab(data.vocab_size), t, data, progress=False)
    assert info.value.phase == "optimizer" and classify(info.value).status == "oom"


@pytest.mark.parametrize("text, value", [("8GiB", 8 * 2**30), ("600MB", 600 * 10**6), ("1.5 GiB", 3 * 2**29),
                                         ("1024", 1024)])
def test_parse_size(text, value):
    assert parse_size(text) == value


# --- whole studies ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 4-trial study, shared: tests that need a finished study to refuse to resume work on a copy."""
    return run_study(settings(tmp_path_factory.mktemp("finished")))


def copy_of(finished, tmp_path) -> None:
    """The finished study's results folder copied to where settings(tmp_path) looks for it."""
    import shutil

    shutil.copytree(finished.results_dir.parent, tmp_path / "results")


def test_each_trial_log_holds_what_the_trial_printed(finished):
    """#24.15: a trial's log says what it trained, each evaluation with the tuner's answer, and how it ended."""
    df = pd.read_csv(finished.results_dir / "trials.csv")
    for _, row in df.iterrows():
        log = (finished.results_dir / "logs" / f"trial_{int(row['number']):04d}.log").read_text()
        assert log.startswith("model {") and "\ntrain {" in log, log
        assert "evaluation 1 at step" in log, log
        if row["status"] == "ok":
            done = log[log.index("done: stopped_by"):].split(", ")
            logged = float(next(part for part in done if part.startswith("val_loss ")).split()[1])
            assert logged == pytest.approx(row["val_loss"], abs=5e-5), log  # trials.csv rounds to 4 decimals


def test_study_completes_and_writes_every_file(finished):
    out = finished
    folder = out.results_dir
    for name in ("trials.csv", "summary.md", "best.json", "study.db", "rungs.png", "history.png",
                 "loss_vs_memory.png", "throughput_vs_memory.png"):
        assert (folder / name).stat().st_size > 0, name
    df = pd.read_csv(folder / "trials.csv")
    assert len(df) == 4 and set(df["status"]) <= {"ok", "pruned"}
    ok = df[df["status"] == "ok"]
    # Human units: MiB and seconds, the objective value, when each trial started and how long it took.
    assert (ok["val_loss"] > 0).all() and (ok["tokens_per_s"] > 0).all() and (ok["peak_rss_MiB"] > 50).all()
    # val_loss is rounded to 4 decimals from the full value, objective_value to 6: rounding that again to 4 may
    # land on the other side of a tie (2.87795 against 2.878).
    assert ((ok["objective_value"] - ok["val_loss"]).abs() <= 5e-5 + 1e-9).all() and df["started"].notna().all()
    train_tokens = out.study.user_attrs["corpus_tokens"]["train"]  # epochs: tokens seen / the training split
    assert df["epochs"].notna().all() and list(df["epochs"]) == pytest.approx(list(df["tokens_M"] * 1e6 / train_tokens),
                                                                              abs=0.01)
    # Every second of a trial is booked once: training, warm-up, compiling and evaluation fit in its wall time.
    inside = df["train_s"] + df["warmup_s"] + df["compile_s"] + df["eval_s"] + df["startup_s"]
    assert (inside <= df["duration_s"] + 0.05).all() and (df["warmup_steps"] == 2).all()
    assert ((df["eval_share"] > 0) & (df["eval_share"] < 1)).all() and (df["cpu_share"] > 0).all()
    assert df["batch_size"].isin([2, 4]).all() and df["block_size"].isin([8, 16]).all()
    assert "parent_rss_bytes" not in df and not any(c.endswith("_bytes") for c in df.columns)
    summary = (folder / "summary.md").read_text()
    for section in ("## What was run", "## Verdict", "## Top 10", "## Out-of-memory frontier", "## Search space",
                    "## Environment", "## trials.csv"):
        assert section in summary
    assert "No configuration ran out of memory; the largest tried used" in summary
    # Too few trials trained to the target for parameter importances: not drawn, and the summary says why.
    assert not (folder / "importances.png").exists() and "importances.png: not drawn (4 trial(s)" in summary
    best_json = json.loads((folder / "best.json").read_text())
    model_cfg, train_cfg = from_dict(best_json)
    best = ok.loc[ok["val_loss"].idxmin()]
    assert (model_cfg.n_embed, train_cfg.batch_size, model_cfg.vocab_size) == (best["n_embed"], best["batch_size"], 80)
    # The complete config: what the trial itself trained (its row keeps it), less the device and the rung-only
    # evaluation; provenance says where it comes from.
    trained = json.loads(best["config"])
    assert ModelConfig(**trained["model"]) == model_cfg and train_cfg.seed == trained["train"]["seed"]
    assert best_json["provenance"]["trial"] == int(best["number"]) and train_cfg.device == "auto"
    assert best_json["provenance"]["val_loss_at_target"] == pytest.approx(best["val_loss"], abs=1e-4)
    assert sorted(p.name for p in (folder / "logs").iterdir()) == sorted(
        f"trial_{i:04d}{ext}" for i in range(4) for ext in (".log", ".curve.csv"))  # a curve beside each log


def test_memory_limit_gives_oom_rows_and_every_trial_is_recorded(tmp_path):
    from tune.exec.runner import TrialRunner

    baseline = TrialRunner().probe("cpu")["vm_data_bytes"]
    space = {"batch_size": [2, 64], "block_size": [8, 128], "n_embed": [64, 1024], "n_head": [1, 1],
             "n_layer": [1, 4], "learning_rate": [1e-3, 1e-3]}
    out = run_study(settings(tmp_path, trials=6, space_overrides=space, memory_limit=baseline + 150 * 2**20,
                             trial_seconds=0.5, seed=3, predict=False))  # real OOMs: tests/test_tune_memory.py
    df = trials_frame(out.study)
    assert len(df) == 6 and df["status"].notna().all()
    oom = df[df["status"] == "oom"]
    assert len(oom) >= 1 and (oom["error"].str.contains("can't allocate memory")).all()
    assert oom["oom_phase"].isin(["model build", "forward", "backward", "optimizer", "eval"]).all()
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in out.study.trials if t.user_attrs["status"] == "oom")


def test_hanging_trial_is_killed_as_timeout_and_raising_trial_is_an_error(tmp_path):
    out = run_study(settings(tmp_path, trials=1, trial_timeout=2.0, study_name="hang"), target="tests.tune_faults:hang")
    row = trials_frame(out.study).iloc[0]
    assert row["status"] == "timeout" and 2.0 <= row["trial_seconds"] < 60  # killed, not left to sleep 3600 s
    out = run_study(settings(tmp_path, trials=2, study_name="boom"), target="tests.tune_faults:boom")
    df = trials_frame(out.study)
    errors = df[df["status"] == "error"]  # each configuration tried twice, then 3 errors in a row stop the tuner
    assert len(errors) == 3 and (errors["error"] == "ValueError: boom: injected failure").all()
    log = (out.results_dir / "logs" / "trial_0000.log").read_text()
    assert "Traceback" in log and "boom: injected failure" in log
    out = run_study(settings(tmp_path, trials=1, study_name="cuda"), target="tests.tune_faults:cuda_oom")
    row = trials_frame(out.study).iloc[0]
    assert (row["status"], row["oom_phase"], row["oom_requested_bytes"]) == ("oom", "backward", 5 * 2**29)
    out = run_study(settings(tmp_path, trials=1, study_name="kill"), target="tests.tune_faults:sigkill")
    row = trials_frame(out.study).iloc[0]
    assert row["status"] == "error" and "trial process died: SIGKILL" in row["error"]


def test_the_tuner_process_never_imports_torch(tmp_path):
    """So it can never initialise CUDA: only trial processes touch the device (a whole study, in one process)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tune.search.settings import TuneSettings\nfrom tune.search.study import run_study\n"
        "if __name__ == '__main__':\n"
        "    from tune.core.budget import Budget\n"
        f"    run_study(TuneSettings.of(trials=1, budget=Budget(0.3, 's'), device='cpu', references=(),\n"
        f"              results=Path({str(tmp_path)!r}), data=Path({str(CORPUS)!r}),\n"
        f"              space_overrides={TINY_SPACE!r}, progress=False))\n"
        "    assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_rerun_resumes_and_report_regenerates(tmp_path, capsys):
    # Bookkeeping only: the stand-in trial "trains" to the target at once (its loss set by the configuration).
    first = run_study(settings(tmp_path, trials=3), target=STEADY)
    first.study.ask()  # a trial left RUNNING, as by a tuner killed with SIGKILL
    out = run_study(settings(tmp_path, trials=6), target=STEADY)
    assert out.ran == 3  # the orphan is failed and queued again (it had drawn nothing yet), plus two new trials
    df = trials_frame(out.study)
    assert list(df["number"]) == [0, 1, 2, 3, 4, 5, 6] and df.loc[3, "status"] == "interrupted"
    assert df.loc[4, "retry_of"] == 3 and df["status"].isin(["ok", "pruned"]).sum() == 6
    df = df.drop(index=3)
    params = df[["batch_size", "block_size", "n_embed", "n_head", "n_layer", "learning_rate"]]
    assert not params.duplicated().any()
    csv = (out.results_dir / "trials.csv").read_text()
    (out.results_dir / "trials.csv").unlink()
    with pytest.raises(SystemExit) as info:
        from gptcore.cliutil import run

        run(main, ["report", "--results", str(tmp_path / "results"), "--study-name", "t"])
    assert info.value.code == 0
    assert (out.results_dir / "trials.csv").read_text() == csv
    # Same study, other precision: refused rather than mixed.
    with pytest.raises(UserError, match="dtype: 'float32' -> 'bfloat16'"):
        run_study(settings(tmp_path, trials=7, dtype="bfloat16"))


@pytest.mark.parametrize("argv, needle", [
    (["--trials", "0"], "argument --trials: expected a positive integer"),
    (["--memory-limit", "lots"], "--memory-limit: expected a size such as 8GiB or 600MB, got 'lots'"),
    (["--storage", "sqlite:////nonexistent-dir/x/study.db"], "--storage sqlite:////nonexistent-dir"),
    (["--results", "__FILE__/sub"], "file.txt is a file, not a folder"),
    (["--space", "nope.json"], "--space nope.json"),
    (["--memory-limit", "1MB"], "below what a trial process needs"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, needle, tmp_path, capfd, monkeypatch):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    argv = [a.replace("__FILE__", str(afile)) for a in argv]
    if torch_cuda() and argv[:2] == ["--device", "cuda"]:
        pytest.skip("CUDA is present here")
    monkeypatch.chdir(tmp_path)  # in-process (tests/conftest.py run_cli): relative paths resolve here
    code, _, err = run_cli("tune", ["--trials", "1", "--budget", "0.5s", "--device", "cpu", "--results",
                                    str(tmp_path / "r"), "--no-progress", *argv], capfd)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_ctrl_c_stops_the_trial_records_it_and_exits_130(tmp_path):
    results = tmp_path / "r"
    space_flags = [arg for k, v in TINY_SPACE.items() for arg in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune", "--trials", "3", "--budget", "30s", "--references", "none", "--device", "cpu",
         "--results",
         str(results), "--study-name", "c", "--no-progress", *space_flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_default)
    log = results / "c" / "logs" / "trial_0000.log"
    deadline = time.time() + 60
    while not log.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the trial is training now
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    df = pd.read_csv(results / "c" / "trials.csv")
    assert list(df["status"]) == ["interrupted", "queued"], out  # queued again, with its parameters, for a resume
    assert df.loc[1, "retry_of"] == 0 and df.loc[1, "batch_size"] == df.loc[0, "batch_size"]


# --- measurement honesty ------------------------------------------------------------------------------


def test_median_pruner_never_prunes_at_the_first_report():
    from tune.search.strategy import make_pruner

    study = optuna.create_study(pruner=make_pruner("median", RungPlan((1 / 27, 1 / 9, 1 / 3, 1.0), 3)))
    for value in (1.0, 1.0, 1.0, 1.0, 1.0):  # five finished trials: the pruner is past its start-up
        t = study.ask()
        for k in (1, 3, 9, 27):  # the rungs' report steps
            t.report(value, k)
        study.tell(t, value)
    bad = study.ask()
    bad.report(9.0, 1)
    assert not bad.should_prune()  # far worse than the median, but only at the first rung
    bad.report(9.0, 3)
    assert bad.should_prune()


def test_contention_rules():
    from tune.core.trust import budget_warnings, contention

    quiet = {"cpu_share": 0.97, "others_cores": 0.05, "threads": 2, "cores": 2}
    assert contention(quiet, "cpu") is None
    assert "other processes kept 1.0 of 2 cores busy" in contention({**quiet, "others_cores": 1.0}, "cpu")
    assert "got 40%" in contention({**quiet, "cpu_share": 0.4}, "cpu")
    # One thread on two cores leaves a core free: a neighbour on it is not contention.
    assert contention({**quiet, "threads": 1, "others_cores": 1.0}, "cpu") is None
    assert "1 other process(es) on its GPU" in contention({**quiet, "gpu_other_processes": 1}, "cuda")
    # A GPU trial pinned to 16 cores keeps about one busy launching kernels: a neighbour on 0.3 of the other 15
    # is not contention (seen on an H200), one on 15.5 of them is.
    gpu = {"cpu_share": 1.2 / 16, "others_cores": 0.3, "threads": 16, "cores": list(range(16)), "cores_owned": True}
    assert contention(gpu, "cuda") is None and "kept 0.3 of its 16 own" in contention(gpu, "cpu")
    assert "kept 15.5 of its 16 own core(s) busy" in contention({**gpu, "others_cores": 15.5}, "cuda")
    assert budget_warnings(10, 0.5) == ["only 10 timed steps (< 50)", "evaluation took 50% of its time (> 25%)"]
    assert budget_warnings(500, 0.05) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: a neighbour on one, trials on the other")
def test_a_neighbour_on_another_core_does_not_make_the_trials_cores_busy():
    """The busy-at-start check looks at the trials' cores only (a tuner given --cores 0 beside a job on core 1)."""
    from tune.exec.health import busy_now

    mine, theirs = sorted(os.sched_getaffinity(0))[:2]
    spin = (f"import os, time\nos.sched_setaffinity(0, {{{theirs}}})\nend = time.time() + 20\n"
            f"while time.time() < end: pass\n")
    hog = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        # The hog alone keeps its core busy; the trials' core stays (nearly) idle, whatever else the OS runs there.
        assert busy_now(1.0, [theirs]) > 0.8 and busy_now(1.0, [mine]) < 0.5
    finally:
        hog.kill()
        hog.wait()


def test_a_busy_neighbour_flags_the_trials_it_slowed(tmp_path):
    """A busy-looping process on every core the trial may use (two at least): the trial is flagged contended."""
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    # As many as this process's cores (not os.cpu_count(): a tuner under taskset sees, and trains on, fewer).
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(max(len(os.sched_getaffinity(0)), 2))]
    try:
        time.sleep(0.5)
        out = run_study(settings(tmp_path, trials=1, trial_seconds=1.0))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    df = trials_frame(out.study)
    assert df.loc[0, "contended"] and "core(s) busy" in df.loc[0, "contended"]
    assert out.study.user_attrs["busy_cores_at_start"] > 0.5
    summary = (out.results_dir / "summary.md").read_text()
    assert "ran while other processes competed" in summary and "| 0 | " in summary
    assert pd.read_csv(out.results_dir / "trials.csv").loc[0, "contended"] == df.loc[0, "contended"]


def test_objective_throughput_with_hyperband_and_random_sampler(tmp_path):
    out = run_study(settings(tmp_path, trials=3, objective="throughput", pruner="hyperband", sampler="random",
                             trial_seconds=0.4))
    df = trials_frame(out.study)
    assert out.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert isinstance(out.study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(out.study.pruner, optuna.pruners.HyperbandPruner)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 3  # throughput is told at the end only: nothing to prune on
    values = {t.number: t.value for t in out.study.trials}
    assert all(values[n] == pytest.approx(v) for n, v in zip(ok["number"], ok["tokens_per_s"]))
    assert out.study.best_value == ok["tokens_per_s"].max()


def test_hyperband_prunes_a_losing_trial_on_loss():
    from tune.search.strategy import make_pruner

    study = optuna.create_study(pruner=make_pruner("hyperband", RungPlan((1 / 27, 1 / 9, 1 / 3, 1.0), 3)),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned = 0
    for i in range(30):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        value = 1.0 if i % 3 else 5.0  # every third trial is far worse
        for k in (1, 3, 9, 27):
            t.report(value, k)
            if t.should_prune():
                pruned += value == 5.0
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(t, value)
    assert pruned >= 3


def test_random_sampler_is_seeded_and_reproducible(tmp_path):
    from tune.search.session import make_sampler

    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler("random", seed=5))
        draws.append([SPACES["small"].suggest(study.ask()) for _ in range(5)])
    assert draws[0] == draws[1] and len({str(d) for d in draws[0]}) > 1


def test_resume_with_another_search_space_is_refused(tmp_path, finished):
    copy_of(finished, tmp_path)  # a finished study of 4 trials, resumed to 5
    with pytest.raises(UserError, match="space:"):
        run_study(settings(tmp_path, trials=5, space_overrides={**TINY_SPACE, "n_layer": [1, 2]}))


def test_an_empty_study_db_beside_results_is_refused_and_nothing_overwritten(tmp_path, finished):
    copy_of(finished, tmp_path)  # a finished study of 4 trials, resumed to 5
    folder = tmp_path / "results" / "t"
    csv = (folder / "trials.csv").read_text()
    (folder / "study.db").write_bytes(b"")
    with pytest.raises(UserError, match="study.db: empty, but .*trials.csv holds"):
        run_study(settings(tmp_path, trials=5))
    assert (folder / "trials.csv").read_text() == csv
    (folder / "study.db").write_text("not a database")
    with pytest.raises(UserError, match="not a SQLite database"):
        run_study(settings(tmp_path, trials=5))


def test_a_storage_that_will_not_open_leaves_no_results_folder(tmp_path):
    with pytest.raises(UserError, match="--storage"):
        run_study(settings(tmp_path, trials=1, storage="nosuchdb://x"))
    assert not (tmp_path / "results").exists()  # not even the parent it had to create


def test_a_parent_failure_between_ask_and_tell_closes_the_trial(tmp_path, monkeypatch):
    from tune.search import study as study_mod

    def broken_record(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(study_mod, "record", broken_record)
    # The stand-in trial "trains" at once: the fault under test is the parent's, after the trial ended.
    # The worker waits a poll before its next claim after a fault of its own (a database restart passes): the
    # shortest, 1 s, as the heartbeat sets it.
    out = run_study(settings(tmp_path, trials=1, heartbeat_interval=1), target=STEADY)  # said in one line per trial
    assert "3 trials in a row failed" in out.stopped_because and "disk full" in out.stopped_because
    stored = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'results' / 't' / 'study.db'}")
    trial, retry, other, queued = stored.trials  # each closed, and queued again once: the fault was the tuner's
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["status"] == "error"
    assert "disk full" in trial.user_attrs["error"]
    assert retry.params == trial.params and retry.state == optuna.trial.TrialState.FAIL
    assert queued.state == optuna.trial.TrialState.WAITING and queued.params == other.params
    assert "stopped" not in trials_frame(stored).columns  # the tables were still written
    assert (out.results_dir / "trials.csv").exists()


# --- rungs, references, the winner's model ------------------------------------------------------------


def test_trials_are_judged_at_rungs_and_rows_show_the_rung_reached(tmp_path):
    # Every model kept (--keep-models 3 would drop some when more than 3 train to the target: tests/test_keep_models.py)
    out = run_study(settings(tmp_path, trials=8, budget=Budget(0.9, "s"), rungs=3, pruner="asha", seed=2,
                             keep_models=100))
    df = pd.read_csv(out.results_dir / "trials.csv")
    assert {"rung", "rungs", "rung_loss", "loss_rung_1", "loss_rung_2", "loss_rung_3"} <= set(df.columns)
    ok, pruned = df[df["status"] == "ok"], df[df["status"] == "pruned"]
    assert len(ok) >= 1 and (ok["rung"] == 3).all() and ok["loss_rung_3"].notna().all()
    assert (ok["rung_loss"] == ok["val_loss"]).all()
    for _, row in pruned.iterrows():  # stopped at a lower rung, judged on its loss there
        assert row["rung"] < 3 and row["rung_loss"] == row[f"loss_rung_{int(row['rung'])}"]
    for t in out.study.trials:
        assert set(t.intermediate_values) <= {1, 3, 9}  # reports at the rungs' steps only
    # Only trials that trained to the target keep a model.
    kept = sorted(p.name for p in (out.results_dir / "checkpoints").iterdir())
    assert kept == [f"trial_{int(n):04d}" for n in ok["number"]]
    summary = (out.results_dir / "summary.md").read_text()
    assert "## Rungs" in summary and "## Verdict" in summary and (out.results_dir / "rungs.png").stat().st_size > 0


def test_references_run_to_the_target_and_the_winner_model_is_kept(tmp_path):
    from gptcore.checkpoint import load_checkpoint
    from gptcore.sample import sample_text

    out = run_study(settings(tmp_path, trials=2, references=("tiny",)))
    df = trials_frame(out.study)
    ref = df[df["reference"] == "tiny"]
    assert len(ref) == 1 and ref.iloc[0]["status"] == "ok" and ref.iloc[0]["rung"] == ref.iloc[0]["rungs"]
    assert len(df[df["reference"].isna()]) == 2  # references do not count toward --trials
    summary = (out.results_dir / "summary.md").read_text()
    assert "reference `tiny`" in summary
    best = json.loads((out.results_dir / "best.json").read_text())
    assert best["train"]["max_seconds"] == 0.5 and best["train"]["max_iters"] is None
    assert best["provenance"]["study"] == "t" and best["provenance"]["target_budget"] == "0.5 s"
    assert "from scratch" in best["provenance"]["rule"]
    from_dict(best)  # the provenance block is for people: the config still loads
    assert best["train"]["eval_iters"] == 4 and best["train"]["eval_batch_size"] == 32
    ckpt = load_checkpoint(out.results_dir / "best-model")
    ok = df[df["status"] == "ok"]
    winner = ok.loc[ok["val_loss"].idxmin()]
    assert ckpt.extra["tuner"]["val_loss"] == pytest.approx(winner["val_loss"])
    assert ckpt.model_cfg.n_embed == best["model"]["n_embed"]
    text = sample_text(ckpt.build_model(), ckpt.tokenizer, "Dorothy", max_new_tokens=5, seed=0)
    assert len(text) == 5
    # Resuming runs no reference twice.
    again = run_study(settings(tmp_path, trials=3, references=("tiny",)))
    assert len(trials_frame(again.study).query("reference == 'tiny'")) == 1 and again.ran == 1


def test_the_readable_table_leaves_missing_figures_blank_and_names_an_unrecorded_reference():
    from tune.report.frame import COLUMNS, readable

    df = pd.DataFrame([{"number": 3, "status": "pruned", "batch_size": 8, "block_size": 16, "n_embed": 64,
                        "n_head": 2, "n_layer": 1, "learning_rate": 1e-3, "rung": 1, "rungs": 2},
                       {"number": None, "reference": None, "status": "interrupted"}]).reindex(
                           columns=COLUMNS)
    table = readable(df)
    assert list(table["trial"]) == ["3", "ref (unrecorded)"]
    assert "retry_of" not in table and table.loc[0, "k tok/s"] == "" and table.loc[0, "batch"] == 8
    assert "<NA>" not in table.to_string() and "nan" not in table.to_markdown()
