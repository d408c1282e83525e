"""python -m tune compare: studies side by side, built as the tuner records them (study.db in a results folder)."""

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from gptcore.cliutil import run
from tune.core.space import Space, preset_params
from tune.report.compare.command import main
from tune.report.compare.data import column_names, geometric_mean, load_sides, shared_speeds
from tune.store.spec import resolve_storage
from tune.store.storage import make_storage

DISTRIBUTIONS = {"log2(batch_size)": IntDistribution(0, 8), "log2(block_size)": IntDistribution(0, 10),
                 "log2(n_head)": IntDistribution(0, 6), "n_embed": IntDistribution(64, 1024, step=64),
                 "n_layer": IntDistribution(1, 16), "learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}
MiB = 2**20
S1, S2, S3, S4, S5 = (8, 32, 64, 1, 1), (16, 64, 128, 2, 2), (32, 128, 128, 4, 2), (4, 16, 64, 1, 1), (8, 8, 64, 2, 1)
BABY = tuple(preset_params("baby")[k] for k in ("batch_size", "block_size", "n_embed", "n_head", "n_layer"))


def values(shape: tuple, lr: float = 1e-3) -> dict:
    batch, block, embed, heads, layers = shape
    return {"batch_size": batch, "block_size": block, "n_embed": embed, "n_head": heads, "n_layer": layers,
            "learning_rate": lr}


def run_of(status: str, shape: tuple, tokens_per_s: float | None, loss: float | None = None, lr: float = 1e-3,
           peak_mib: float = 100, contended: str | None = None) -> tuple:
    return status, shape, tokens_per_s, loss, lr, peak_mib, contended


def make_study(storage, name, device_name, dtype, runs, refs=(), budget="10 s", corpus="/data/wizard_of_oz.txt"):
    """A study as the tuner records it, in `storage`: its environment, settings, trials and reference runs."""
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("environment", {"device": "cuda:0", "device_name": device_name, "device_type": "cuda",
                                        "torch": "2.13.0", "gpu_memory_bytes": 80 * 2**30})
    study.set_user_attr("settings", {"budget": budget, "budget_amount": 10.0, "budget_unit": "s", "dtype": dtype,
                                     "objective": "loss", "corpus": corpus, "trials": len(runs),
                                     "memory_limit_bytes": None})
    for status, shape, tps, loss, lr, peak, contended in runs:
        attrs = {"status": status, "val_loss": loss, "tokens_per_s": tps, "contended": contended,
                 "measured_peak_bytes": peak * MiB if status != "oom" else None}
        study.add_trial(create_trial(
            params=Space.encode(values(shape, lr)), distributions=DISTRIBUTIONS, user_attrs=attrs,
            value=loss if status == "ok" else None, state=TrialState.COMPLETE if status == "ok" else TrialState.PRUNED))
    if refs:
        companion = optuna.create_study(study_name=f"{name}:references", storage=storage)
        for preset, tps, loss in refs:
            companion.add_trial(create_trial(value=loss, user_attrs={
                "reference": preset, "status": "ok", "val_loss": loss, "tokens_per_s": tps,
                "measured_peak_bytes": 50 * MiB}))


def in_folder(results, name, *args, **kw) -> None:
    """A results folder as the tuner leaves it: RESULTS/NAME/study.db holding the study and its references."""
    (results / name).mkdir(parents=True)
    make_study(f"sqlite:///{results / name / 'study.db'}", name, *args, **kw)


def journal(tmp_path) -> tuple[str, optuna.storages.BaseStorage]:
    """A journal storage (faster to fill than SQLite) for studies given by name: its --storage, and it opened."""
    spec = f"journal:{tmp_path / 'studies.journal'}"
    return spec, make_storage(resolve_storage(spec, tmp_path))


# Known speeds. Shared: S1 (A's median of 1000 and 3000: 2000; B 6000: 3x), S2 (500 -> 1000: 2x) and the baby
# reference (100 -> 400: 4x). Not shared: S3 ran out of memory in B, S4 only diverged in B, S5 only B ran.
A_RUNS = [run_of("ok", S1, 1000, 2.0), run_of("pruned", S1, 3000, lr=2e-3), run_of("ok", S2, 500, 1.8, peak_mib=300),
          run_of("ok", S3, 400, 1.9, peak_mib=700), run_of("ok", S4, 50, 2.5)]
B_RUNS = [run_of("ok", S1, 6000, 2.1, contended="other processes kept 0.8 cores busy"),
          run_of("ok", S2, 1000, 1.7, lr=3e-3, peak_mib=200),
          run_of("oom", S3, None), run_of("diverged", S4, 999), run_of("ok", S5, 70, 2.6)]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two studies in their results folders (built once: SQLite is slow to create); tests write elsewhere."""
    results = tmp_path_factory.mktemp("compare") / "results"
    in_folder(results, "old", "NVIDIA A100", "float32", A_RUNS, refs=[("baby", 100, 2.2)])
    in_folder(results, "new", "NVIDIA H200", "bfloat16", B_RUNS, refs=[("baby", 400, 2.3)])
    return results


def compare(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run(main, argv, prog="python -m tune compare")
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_speed_ups_are_median_tokens_per_s_over_the_baseline_and_their_geometric_mean(two):
    sides = load_sides(["old", "new"], storage=None, results=two)
    shared = shared_speeds(sides)
    assert set(shared.index) == {S1, S2, BABY}  # S3 ran out of memory in B, S4 only diverged there, S5 only in B
    assert shared.loc[S1, "tokens_per_s_0"] == 2000 and shared.loc[S1, "runs_0"] == 2  # lr differs: one shape
    assert shared["speedup_1"].to_dict() == pytest.approx({S1: 3.0, S2: 2.0, BABY: 4.0})
    assert geometric_mean(shared["speedup_1"]) == pytest.approx(24 ** (1 / 3))
    assert math.isnan(geometric_mean(pd.Series([], dtype=float)))


def test_compare_writes_the_tables_and_the_plot_and_prints_them(two, capsys):
    # Results folders given: the comparison goes beside the first one.
    code, out, err = compare([str(two / "old"), str(two / "new")], capsys)
    folder = two / "compare-old-vs-new"
    md = (folder / "compare.md").read_text()
    assert code == 0 and err == ""
    assert (folder / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md in out and f"wrote {folder / 'compare.md'}" in out and f"wrote {folder / 'compare.png'}" in out
    lines = md.splitlines()
    assert "|  | NVIDIA A100 float32 | NVIDIA H200 bfloat16 |" in lines
    # Best configurations: S2 in both (lowest loss), its six values, loss, k tokens/s and peak MiB.
    assert "| configuration | trial 2 | trial 1 |" in lines
    assert "| learning rate | 1.00e-03 | 3.00e-03 |" in lines
    assert "| val loss at the target | 1.8000 | 1.7000 |" in lines
    assert "| k tokens/s | 0.500 | 1.00 |" in lines and "| peak MiB | 300 | 200 |" in lines
    assert "| 8 | 32 | 64 | 1 | 1 | 2.00 (2) | 6.00 (1, 1 contended) | 3.00x |" in lines
    assert "**warning**: 1 of these runs were contended" in md
    assert "geometric-mean speed-up **2.88x** over 3 shared configuration(s) (from 2.00x to 4.00x)" in md
    assert "Warning" not in md  # same budget, same corpus
    # Frontiers: B ran out of memory at S3 (2 layers x 128), A did not run out at all.
    assert "| 2 x 128 | ran 32 x 128 (700 MiB) | ran 16 x 64 (200 MiB); OOM 32 x 128 |" in lines
    assert "- NVIDIA A100 float32: none ran out of memory, largest tried 700 MiB peak (memory limit 81,920 MiB)" \
        in lines
    assert "- NVIDIA H200 bfloat16: 1 run(s) out of memory, 0 skipped as predicted out of memory" in md


def test_quiet_prints_only_the_paths_and_out_chooses_the_folder(two, tmp_path, capsys):
    code, out, _ = compare(["old", "new", "--results", str(two), "--out", str(tmp_path / "cmp"), "-q"], capsys)
    assert code == 0 and out.splitlines() == [f"wrote {tmp_path / 'cmp' / 'compare.md'}",
                                              f"wrote {tmp_path / 'cmp' / 'compare.png'}"]


def test_no_shared_configuration_says_so_and_how_to_get_some(tmp_path, capsys):
    spec, storage = journal(tmp_path)
    make_study(storage, "a", "AMD EPYC", "float32", [run_of("ok", S1, 1000, 2.0)])
    make_study(storage, "b", "AMD EPYC", "bfloat16", [run_of("ok", S2, 900, 2.0)], budget="20 s",
               corpus="/elsewhere/other.txt")
    results = tmp_path / "results"
    code, _, _ = compare(["a", "b", "--storage", spec, "--results", str(results)], capsys)
    md = (results / "compare-a-vs-b" / "compare.md").read_text()
    assert code == 0 and "shared by all: 0" in md
    assert "No configuration ran in all studies" in md and "`--warm-start a`" in md
    assert "speed-up |" not in md  # no speed table
    assert (results / "compare-a-vs-b" / "compare.png").is_file()
    # Different targets and corpora: the losses are not comparable, and the note says so for each.
    assert "differ in target budget (AMD EPYC float32: 10 s, AMD EPYC bfloat16: 20 s)" in md
    assert "differ in corpus (AMD EPYC float32: wizard_of_oz.txt, AMD EPYC bfloat16: other.txt)" in md


def test_columns_are_device_and_dtype_with_the_study_name_where_they_collide():
    env = {"device_name": "NVIDIA H200"}
    assert column_names([(env, {"dtype": "float32"}, "a"), (env, {"dtype": "bfloat16"}, "b")]) == [
        "NVIDIA H200 float32", "NVIDIA H200 bfloat16"]
    assert column_names([(env, {"dtype": "float32"}, "a"), (env, {"dtype": "float32"}, "b"),
                         ({"device": "cpu"}, {"dtype": "float32"}, "c")]) == [
        "NVIDIA H200 float32 (a)", "NVIDIA H200 float32 (b)", "cpu float32"]
    same = [(env, {"dtype": "float32"}, "a")] * 2
    assert column_names(same) == ["NVIDIA H200 float32 (a) #1", "NVIDIA H200 float32 (a) #2"]


def test_three_studies_share_what_all_ran_each_against_the_first(tmp_path, capsys):
    spec, storage = journal(tmp_path)
    make_study(storage, "old", "NVIDIA A100", "float32", A_RUNS)
    make_study(storage, "new", "NVIDIA H200", "bfloat16", B_RUNS)
    make_study(storage, "third", "NVIDIA B200", "bfloat16", [run_of("ok", S1, 8000, 2.0)])
    code, _, _ = compare(["old", "new", "third", "--storage", spec, "--out", str(tmp_path / "out")], capsys)
    md = (tmp_path / "out" / "compare.md").read_text()
    assert code == 0
    assert "| 8 | 32 | 64 | 1 | 1 | 2.00 (2) | 6.00 (1, 1 contended) | 8.00 (1) | 3.00x | 4.00x |" in md.splitlines()


@pytest.mark.parametrize("argv, needle", [
    (["old"], "expected two or more studies to compare, got one (old)"),
    (["old", "nope"], "nope"),
    (["old", "new", "--out", "{blocker}/sub"], "is a file, not a folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(two, tmp_path, capsys, argv, needle):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    before = sorted([*tmp_path.rglob("*"), *two.rglob("*")])
    argv = [a.format(blocker=blocker) for a in argv] + ["--results", str(two)]
    code, out, err = compare(argv, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err
    assert err.startswith("python -m tune compare: error: ")
    assert sorted([*tmp_path.rglob("*"), *two.rglob("*")]) == before
