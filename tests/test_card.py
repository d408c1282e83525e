"""`python -m tune card`: every figure on the page is the study's, nothing is fetched, and it renders in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tune.core.space import PARAMS, Space
from tune.report.card.command import main
from tune.report.card.html import fmt
from tune.report.frame import choose_winner, label, oom_frontier, originals, trials_frame
from tune.store.storage import reference_study_name

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
DISTRIBUTIONS = {"log2(batch_size)": IntDistribution(2, 5), "log2(block_size)": IntDistribution(4, 7),
                 "n_embed": IntDistribution(64, 256, step=64), "log2(n_head)": IntDistribution(0, 3),
                 "n_layer": IntDistribution(1, 4), "learning_rate": FloatDistribution(1e-4, 3e-3, log=True)}
ENV = {"device": "cpu", "device_name": "Test CPU", "device_type": "cpu", "cpu": "Test CPU", "cpu_threads": 1,
       "torch": "2.13.0+cpu", "python": "3.11.7", "gpus": [], "gpu_count": 0}
SETTINGS = {"budget": "5 s", "budget_amount": 5.0, "budget_unit": "s", "dtype": "float32", "objective": "loss",
            "memory_limit_bytes": None, "trials": 5, "sampler": "tpe", "pruner": "asha", "confirm_runs": 2}


def config(batch, block, embed, heads, layers, lr=1e-3):
    return dict(zip(PARAMS, (batch, block, embed, heads, layers, lr)))


# (status, configuration, figures): two that trained (trial 1 wins), one pruned, two out of memory at one size.
TRIALS = [
    ("ok", config(8, 32, 64, 2, 1), {"val_loss": 2.5, "tokens_per_s": 20_000.0, "peak": 300, "n_params": 100_000}),
    ("ok", config(16, 64, 128, 4, 2, 2e-3), {"val_loss": 2.2, "tokens_per_s": 12_000.0, "peak": 400,
                                              "n_params": 500_000}),
    ("pruned", config(4, 16, 64, 1, 1), {"tokens_per_s": 30_000.0, "peak": 250, "n_params": 90_000}),
    ("oom", config(32, 128, 256, 8, 4), {}),
    ("predicted_oom", config(32, 64, 256, 8, 4), {}),
]


def _attrs(status, figures):
    attrs = {"status": status, **{k: v for k, v in figures.items() if k != "peak"}}
    if "peak" in figures:
        attrs["measured_peak_bytes"] = figures["peak"] * MiB
    return attrs


def make_study(folder: Path, trials=TRIALS, env=ENV, reference=True) -> optuna.Study:
    """A finished study in folder/study.db, made directly (no training): the records a real study leaves."""
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name=folder.name, storage=storage)
    study.set_user_attr("environment", env)
    study.set_user_attr("settings", SETTINGS)
    for status, values, figures in trials:
        state = TrialState.COMPLETE if status == "ok" else TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            params=Space.encode(values), distributions=DISTRIBUTIONS, state=state,
            value=figures["val_loss"] if status == "ok" else None, user_attrs=_attrs(status, figures),
            intermediate_values={1: figures.get("val_loss", 3.0)} if "tokens_per_s" in figures else None))
    if reference:  # the `baby` preset, in its companion study
        refs = optuna.create_study(study_name=reference_study_name(folder.name), storage=storage)
        refs.add_trial(optuna.trial.create_trial(
            value=2.4, state=TrialState.COMPLETE,
            user_attrs={"reference": "baby", **_attrs("ok", {"val_loss": 2.4, "tokens_per_s": 5_000.0, "peak": 350,
                                                             "n_params": 800_000})}))
    return study


def matmul_doc(env: dict, rows: list[tuple], crossover: dict | None = None) -> dict:
    """A `python -m benchmarks matmul` JSON of (device, dtype, size, gflops) rows."""
    results = [{"device": d, "dtype": t, "lib": "torch", "transfer": False, "size": str(n), "m": n, "n": n, "k": n,
                "gflops": g, "peak_gflops": 40.0 if d == "cpu" else 900.0, "share_of_peak":
                g / (40.0 if d == "cpu" else 900.0)} for d, t, n, g in rows]
    peaks = [{"device": d, "dtype": t, "peak_gflops": 40.0 if d == "cpu" else 900.0, "peak_source": "test"}
             for d, t in dict.fromkeys((r[0], r[1]) for r in rows)]
    return {"environment": env, "crossover": crossover or {}, "peaks": peaks, "results": results}


def card_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="card-data">(.*?)</script>', page,
                                re.S).group(1).replace("<\\/", "</"))


def section(page: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', page, re.S).group(1)


def table_rows(html_table: str) -> list[list[str]]:
    body = re.search(r"<tbody>(.*?)</tbody>", html_table, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    """A study, a matmul JSON measured on its device in results/bench/, and the card written with the defaults."""
    results = tmp_path_factory.mktemp("card") / "results"
    study = make_study(results / "s1")
    bench = results / "bench" / "matmul.json"
    bench.parent.mkdir(parents=True)
    bench.write_text(json.dumps(matmul_doc({"cpu": "Test CPU"}, [("cpu", "float32", 64, 12.5),
                                                                 ("cpu", "float32", 512, 38.25)])))
    assert main([str(results / "s1"), "--results", str(results), "-q"]) == 0
    html = results / "s1" / "card.html"
    return study, html.read_text(), bench, html


def test_every_figure_on_the_card_is_the_studys(card):
    study, page, _, _ = card
    data = card_data(page)
    df = trials_frame(study)
    runs = originals(df)
    win = choose_winner(df, SETTINGS).row
    # The winner: its label, six values and figures, in the data block and, formatted, in the table a person reads.
    assert data["winner"]["label"] == label(win) == "1"
    for key in (*PARAMS, "val_loss", "tokens_per_s", "peak_memory_bytes", "n_params"):
        assert data["winner"][key] == pytest.approx(win[key])
    [best] = table_rows(section(page, "best"))
    assert best == ["1", "16", "64", "128", "4", "2", fmt("lr", 2e-3), fmt("loss", 2.2), fmt("ktok", 12_000),
                    fmt("mib", 400 * MiB), fmt("params", 500_000)] == ["1", "16", "64", "128", "4", "2", "2.00e-03",
                                                                       "2.2000", "12.0", "400", "0.50"]
    assert "<b>trial 1</b>" in section(page, "best")
    # Every configuration tried, once (the reference first, as trials_frame orders them), and the counts.
    rows = table_rows(section(page, "loss"))
    assert [r[0] for r in rows] == [label(r) for _, r in runs.iterrows()] == ["ref baby", "0", "1", "2", "3", "4"]
    assert [r[1] for r in rows] == list(runs["status"])
    assert rows[0][2:6] == ["2.4000", "5.00", "350", "0.80"] and rows[3][2:6] == ["-", "30.0", "250", "0.09"]
    assert data["counts"] == {"ok": 3, "pruned": 1, "oom": 1, "predicted_oom": 1}
    # The out-of-memory frontier: oom_frontier's rows, and its table on the page.
    frontier = oom_frontier(runs)
    assert data["frontier"] == json.loads(frontier.to_json(orient="records"))
    assert data["out_of_memory"] == 2 and 'data-oom="2"' in page
    big = [r for r in table_rows(section(page, "frontier")) if r[:2] == ["4", "256"]]
    assert big == [["4", "256", "-", "-", "32 x 128", "32 x 64", "2"]]
    assert "the largest that trained used 400 MiB" in section(page, "frontier")
    # The figures: three plots, each an inline PNG.
    assert re.findall(r'data-figure="(\w+)"><img alt="[^"]*" src="data:image/png;base64,', page) == \
        ["matmul", "loss", "size"]


def test_the_matmul_section_reads_the_file_measured_on_this_device(card):
    _, page, bench, _ = card
    part = section(page, "matmul")
    assert f"source: {bench}, written " in part and "quick pass" not in part
    assert [r[:2] for r in table_rows(part)] == [["64", "12.5 (31%)"], ["512", "38.2 (96%)"]]
    assert "no GPU in these measurements" in part
    assert card_data(page)["matmul"]["rows"][1]["gflops"] == 38.25


def test_the_card_fetches_nothing(card):
    page = card[1]
    assert "http://" not in page and "https://" not in page and "url(" not in page and "@import" not in page
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "<link" not in page and not re.search(r"<script(?![^>]*application/json)", page)


def test_a_gpu_study_shows_its_crossover_and_a_file_from_another_device_is_flagged(tmp_path, capsys):
    gpu = {**ENV, "device": "cuda:0", "device_name": "NVIDIA H200", "device_type": "cuda", "gpu_memory_bytes": 2**37}
    make_study(tmp_path / "g1", env=gpu, reference=False)
    doc = matmul_doc({"cpu": "Test CPU", "device_name": "NVIDIA H100"},
                     [("cpu", "float32", 256, 30.0), ("cuda:0", "bfloat16", 256, 400.0)],
                     {"cuda:0 bfloat16": "256"})
    given = tmp_path / "mm.json"
    given.write_text(json.dumps(doc))
    out = tmp_path / "cards" / "g1.html"
    assert main([str(tmp_path / "g1"), "--matmul", str(given), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"  # --quiet: the path only
    part = section(out.read_text(), "matmul")
    assert "cuda:0 bfloat16: the GPU beats the CPU from size <b>256</b> on" in part
    assert "measured on NVIDIA H100, not on the study&#x27;s device (NVIDIA H200)" in part
    assert "NVIDIA H200 (cuda:0), 131,072 MiB" in section(out.read_text(), "facts")


def test_no_matmul_and_no_out_of_memory_are_said_in_words(tmp_path, capsys):
    make_study(tmp_path / "s2", trials=TRIALS[:3], reference=False)
    assert main([str(tmp_path / "s2"), "--no-matmul", "-q"]) == 0
    page = (tmp_path / "s2" / "card.html").read_text()
    assert "No matmul figures: left out: --no-matmul was given." in section(page, "matmul")
    assert ("No configuration ran out of memory; the largest tried used 400 MiB."
            in section(page, "frontier"))


def test_without_a_matching_file_a_quick_pass_runs_now(tmp_path, capsys):
    # The study ran on this machine's CPU model (so the quick pass measures its device); no results/bench here.
    env = {**ENV, "cpu": "whatever this CPU is", "device_name": "this CPU"}
    make_study(tmp_path / "s3", trials=TRIALS[:2], env=env, reference=False)
    code = subprocess.run(
        [sys.executable, "-c",
                           "import sys; from tune.report.card.command import main; sys.exit(main(sys.argv[1:]))",
         str(tmp_path / "s3"), "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert code.returncode == 0, code.stderr
    assert "running a quick matmul pass: python -m benchmarks matmul --sizes 64,128,256,512,1024" in code.stdout
    data = card_data((tmp_path / "s3" / "card.html").read_text())
    assert data["matmul"]["missing"] is None
    assert data["matmul"]["source"].startswith("quick pass run now (python -m benchmarks matmul")
    assert f"there is no {tmp_path / 'bench' / 'matmul.json'}" in data["matmul"]["source"]
    assert {r["size"] for r in data["matmul"]["rows"]} == {"64", "128", "256", "512", "1024"}
    assert all(r["device"] == "cpu" and r["gflops"] > 0 for r in data["matmul"]["rows"])
    assert data["matmul"]["peaks"][0]["peak_gflops"] > 0


BAD = [
    (["{tmp}/no-such-study"], "{tmp}/no-such-study: no such results folder"),
    (["{tmp}/s4", "--matmul", "{tmp}/missing.json"], "--matmul {tmp}/missing.json: no such file"),
    (["{tmp}/s4", "--matmul", "{tmp}/s4/study.db"], "--matmul {tmp}/s4/study.db: not JSON"),
    (["{tmp}/s4", "--no-matmul", "--out", "{tmp}/s4"], "--out {tmp}/s4: is a folder"),
    (["{tmp}/s4", "--no-matmul", "--out", "{tmp}/s4/study.db/card.html"], "{tmp}/s4/study.db is not a folder"),
]


@pytest.mark.parametrize("args, expected", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, expected):
    make_study(tmp_path / "s4", trials=TRIALS[:1], reference=False)
    before = sorted(tmp_path.rglob("*"))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m tune card: error: ")
    assert expected.format(tmp=tmp_path) in err
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_input_from_the_command_line_exits_2_without_a_traceback(tmp_path):
    code = "import sys; from tune.report.card.command import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code,
                           str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"python -m tune card: error: {tmp_path / 'nope'}: no such results folder (expected a " \
                          f"study's results folder or a study name)\n"
    assert list(tmp_path.iterdir()) == []


def test_matmul_and_no_matmul_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["x", "--matmul", "m.json", "--no-matmul"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_it_renders_in_headless_chromium(card, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary: install Debian's `chromium` package (apt-get install chromium; .ci/run does)")
    _, page, _, html = card
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    env = {**os.environ, "HOME": str(tmp_path)}  # its profile and caches stay in the test's folder
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,3000", html.as_uri()],
                   capture_output=True, timeout=180, env=env, check=True)
    from PIL import Image

    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (1200, 3000)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 22)
    ink = sum(n for n, rgb in colours if rgb != (255, 255, 255)) / (1200 * 3000)
    assert ink > 0.03  # text, tables and plots (an error page, or a page whose images failed, is nearly all white)
    dom = subprocess.run([chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=180, env=env, check=True).stdout
    assert re.findall(r'data-figure="(\w+)"><img alt="[^"]*" src="data:image/png;base64,', dom) == \
        ["matmul", "loss", "size"]
    assert "Hardware report card: Test CPU" in dom and 'id="card-data"' in dom
    assert card_data(dom) == card_data(page)


def test_the_card_command_names_the_winner_by_the_figure_it_is_judged_by():
    from tune.report.card.command import _best

    single = {"label": "9", "val_loss": 1.9006, "confirmed_mean": None}
    assert _best(single) == "trial 9 (val loss 1.9006)" and _best(None) == "none yet"
    # Confirmed: the mean the card's best section and summary.md's verdict give, not the single run's loss.
    confirmed = {**single, "confirmed_mean": 1.94023, "confirmed_runs": 3}
    assert _best(confirmed) == "trial 9 (mean val loss 1.9402 over 3 runs)"
