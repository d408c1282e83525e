"""The gptcore command line: the happy path once, and every user error as one line with exit code 2."""

import argparse
import dataclasses
import importlib
import io
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's copy of the same parser
    from pip._vendor import tomli as tomllib

from gptcore import cliutil
from gptcore.__main__ import build_parser, main
from gptcore.cliutil import run
from tests.conftest import CORPUS, ROOT

STEADY = "tests.tune_faults:steady"

TINY = ["--preset", "tiny", "--max-iters", "30", "--device", "cpu", "--no-progress"]


def call(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        run(main, argv, prog="python -m gptcore")
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ck"
    with pytest.raises(SystemExit) as info:
        run(main, ["train", "--data", str(CORPUS), "--out", str(out), *TINY])
    assert info.value.code == 0
    return out


def test_train_prints_losses_and_saves(checkpoint, capsys, tmp_path):
    code, out, _ = call(["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY,
                         "--n-layer", "1", "--lr", "0.002"], capsys)
    assert code == 0
    assert "step 25: train loss" in out and "val loss" in out and f"checkpoint: {tmp_path / 'c'}" in out
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["train"]["learning_rate"] == 0.002


def test_config_file_then_flags(capsys, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"model": {"n_embed": 48, "n_head": 3}, "train": {"batch_size": 3}}))
    code, _, _ = call(["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY,
                       "--config", str(best), "--batch-size", "5"], capsys)
    assert code == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (cfg["model"]["n_embed"], cfg["model"]["n_head"], cfg["train"]["batch_size"]) == (48, 3, 5)


def test_resume_continues_from_checkpoint_step(checkpoint, capsys):
    code, out, _ = call(["train", "--data", str(CORPUS), "--out", str(checkpoint), "--resume",
                         "--max-iters", "40", "--no-progress"], capsys)
    assert code == 0 and "10 steps (to step 40)" in out
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 40


def test_sample_is_seeded_and_chat_exits_on_eof(checkpoint, capsys, monkeypatch):
    args = ["sample", "--checkpoint", str(checkpoint), "--prompt", "Dorothy", "--max-new-tokens", "40",
            "--seed", "7"]
    code, first, _ = call(args, capsys)
    _, second, _ = call(args, capsys)
    assert code == 0 and first == second and first.startswith("Dorothy") and len(first.rstrip("\n")) == 47
    answers = iter(["Oz", "caf\u00e9"])

    def fake_input(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code, out, _ = call(["chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "5"], capsys)
    assert code == 0 and "\nOz" in out and "not in the vocabulary: '\u00e9'" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--n-layer", "0"], "n_layer must be a positive integer, got 0"),
        (["train", "--n-embed", "30", "--n-head", "4"], "n_embed must be divisible by n_head"),
        (["train", "--lr", "-1"], "learning_rate must be a positive number"),
        (["train", "--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["train", "--lr", "fast"], "argument --learning-rate/--lr: expected a number, got 'fast'"),
        (["train", "--data", "missing.txt"], "missing.txt: no such file or folder"),
        (["train", "--config", "missing.json"], "missing.json: config file not found"),
        (["train", "--device", "cuda:7"], "--device cuda:7"),
        (["train", "--dtype", "float16", "--device", "cpu"], "float16 needs a GPU"),
        (["train", "--preset", "huge"], "invalid choice: 'huge'"),
        (["sample", "--checkpoint", "nowhere"], "nowhere: no such checkpoint folder"),
        (["prepare", "missing.txt", "--out", "x"], "missing.txt: no such file or folder"),
        (["prepare", str(CORPUS), "--out", "x", "--val-fraction", "1.5"],
         "argument --val-fraction: expected a number between 0 and 1"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = call([*argv, *(["--no-progress"] if argv[0] == "train" else [])], capsys)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_prompt_characters(checkpoint, capsys):
    code, _, err = call(["sample", "--checkpoint", str(checkpoint), "--prompt", "na\u00efve"], capsys)
    assert code == 2 and "not in the vocabulary: '\u00ef'" in err
    code, out, _ = call(["sample", "--checkpoint", str(checkpoint), "--prompt", "na\u00efve", "--drop-unknown",
                         "--max-new-tokens", "3"], capsys)
    assert code == 0 and out.startswith("na\u00efve")


def test_truncated_checkpoint_from_a_real_process(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    proc = subprocess.run([sys.executable, "-m", "gptcore", "sample", "--checkpoint", str(broken)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "model.safetensors: unreadable or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- conventions: console commands, help on every flag, progress only on a terminal, --quiet ----------------


class Terminal(io.StringIO):
    """A stream that says it is a terminal (what a bar needs to draw)."""

    def isatty(self) -> bool:
        return True


def tiny_study(tmp_path, **kw):
    """Settings of a study whose trials 'train' at once (tests.tune_faults.steady)."""
    from tests.test_tune import TINY_SPACE
    from tune.core.budget import Budget
    from tune.search.settings import TuneSettings

    base = dict(trials=2, budget=Budget(60, "steps"), references=(), data=CORPUS, device="cpu",
                results=tmp_path / "results", study_name="q", space_overrides=TINY_SPACE, progress=True, seed=0,
                confirm=0, save_models=False)
    return TuneSettings.of(**{**base, **kw})


def test_console_commands_are_declared_and_run_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gptcore": "gptcore.__main__:cli", "gptcore-tune": "tune.__main__:cli",
                       "gptcore-bench": "benchmarks.__main__:cli"}
    for name in ("gptcore", "gptcore-tune"):
        module, func = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("module, argv0, argv, prefix", [
    ("tune.__main__", "/venv/bin/gptcore-tune", ["--trials", "0"],
     "gptcore-tune: error: argument --trials: expected a positive integer, got '0'"),
    ("tune.__main__", "/venv/bin/gptcore-tune", ["report", "--bogus"], "gptcore-tune report: error:"),
    ("tune.__main__", str(ROOT / "tune" / "__main__.py"), ["--trials", "0"], "python -m tune: error:"),
    ("gptcore.__main__", "/venv/bin/gptcore", ["train", "--n-layer", "x"],
     "gptcore train: error: argument --n-layer: expected an integer, got 'x'"),
    ("gptcore.__main__", str(ROOT / "gptcore" / "__main__.py"), ["sample", "--seed", "-1"],
     "python -m gptcore sample: error: argument --seed: expected an integer from 0 to"),
])
def test_cli_names_the_command_the_user_typed(module, argv0, argv, prefix, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0, *argv])
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).cli()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(prefix) and len(err.strip().splitlines()) == 1, err
    assert cliutil.prog("python -m tune") == "python -m tune"  # the name is the running command's only


def parsers() -> list[argparse.ArgumentParser]:
    """Every parser of the command lines, subcommands included (benchmarks' once it has its console command)."""
    import benchmarks.__main__ as bench
    import gptcore.__main__ as core
    import tune.__main__ as tune

    found = [core.build_parser(), tune.build_parser(), tune.build_report_parser(), tune.build_maxbatch_parser()]
    if hasattr(bench, "cli"):  # the benchmarks' own conventions arrive with their console command
        found.append(bench.build_parser())
    todo, seen = list(found), []
    while todo:
        parser = todo.pop()
        seen.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return seen


def test_every_flag_of_every_parser_has_help_a_person_can_act_on():
    checked, bad = 0, []
    for parser in parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                bad += [f"{parser.prog} {name}" for name in action.choices if not (helps.get(name) or "").strip()]
                continue
            names = {s.lstrip("-").replace("-", " ").replace("_", " ") for s in action.option_strings}
            names.add(action.dest.replace("_", " "))
            text = (action.help or "").strip()
            if not text or text == argparse.SUPPRESS or text.lower() in names or len(text.split()) < 3:
                bad.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}: {action.help!r}")
            checked += 1
    assert not bad, bad
    assert checked > 120  # the walk reached the subcommands and the config fields


def test_config_fields_carry_their_help_and_the_flags_use_it():
    from gptcore.config import ModelConfig, TrainConfig

    for f in (*dataclasses.fields(ModelConfig), *dataclasses.fields(TrainConfig)):
        assert len(f.metadata["help"].split()) >= 3, f.name
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "embedding width" in text and "(default 128)" in text and "n embed (" not in text


def test_a_bare_int_or_float_flag_says_an_integer_not_a_int(capsys):
    parser = cliutil.Parser(prog="p")
    parser.add_argument("--count", type=int)
    parser.add_argument("--rate", type=float)
    assert parser.parse_args(["--count", "3", "--rate", "0.5"]) == argparse.Namespace(count=3, rate=0.5)
    for argv, message in ((["--count", "x"], "argument --count: expected an integer, got 'x'"),
                          (["--rate", "nan"], "argument --rate: expected a number, got 'nan'")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert capsys.readouterr().err == f"p: error: {message}\n"
    assert [cliutil.with_article(n) for n in ("integer", "int", "number")] == ["an integer", "an int", "a number"]


def test_train_and_prepare_draw_no_bar_off_a_terminal(tmp_path):
    """No --no-progress, output piped (as `2>&1 | cat`): no carriage return, the summary lines still there."""
    for argv in (["prepare", str(CORPUS), "--out", str(tmp_path / "p")],
                 ["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY[:-1]]):
        proc = subprocess.run([sys.executable, "-m", "gptcore", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        assert proc.returncode == 0 and "\r" not in proc.stdout, proc.stdout
        assert ("prepared 1 file(s)" if argv[0] == "prepare" else "checkpoint:") in proc.stdout


def test_quiet_train_and_prepare_print_only_the_result(tmp_path, capsys):
    code, out, err = call(["train", "--data", str(CORPUS), "--out", str(tmp_path / "c"), *TINY, "-q"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith("done: ") and lines[1].startswith("checkpoint:")
    assert err == ""
    code, out, err = call(["prepare", str(CORPUS), "--out", str(tmp_path / "p"), "--quiet"], capsys)
    assert code == 0 and out.startswith("prepared 1 file(s)") and len(out.splitlines()) == 1 and err == ""


def test_tune_off_a_terminal_prints_a_plain_line_per_trial_and_no_carriage_return(tmp_path):
    """The real tuner, piped (as `python -m tune ... 2>&1 | cat`), with no --no-progress."""
    proc = subprocess.run(
        [sys.executable, "-m", "tune", "--trials", "1", "--budget", "4steps", "--references", "none", "--confirm",
         "0", "--device", "cpu", "--results", str(tmp_path / "r"), "--study-name", "p", "--batch-size", "2",
         "--block-size", "8", "--n-embed", "64", "--n-head", "1", "--n-layer", "1", "--learning-rate", "1e-3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "\r" not in proc.stdout
    assert any(line.startswith("trial   0 ok ") for line in proc.stdout.splitlines()), proc.stdout


def test_the_tune_bar_counts_only_the_searched_trials_and_names_the_running_one(tmp_path, monkeypatch, capsys):
    """With a reference and confirmation runs beside 2 trials, the bar ends at 2/2 (it went on to '3trial')."""
    from tune.search.study import run_study

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_study(tiny_study(tmp_path, references=("tiny",), confirm=1), target=STEADY)
    bar = terminal.getvalue()
    frames = bar.split("\r")
    assert "2/2" in frames[-1] and not any(re.search(r": \d+trial \[", f) for f in frames), bar  # tqdm's past-total
    assert "trial   0 ok" in capsys.readouterr().out  # the lines go above the bar

    from tune.exec.console import Console

    console = Console(total=1, progress=True, stream=Terminal())

    class Runner:
        def run(self, job, *args, **kwargs):
            console._draw()  # what the timer thread does every second
            return "ran"

    assert console.watch(Runner()).run(SimpleNamespace(log="logs/trial_0007.log")) == "ran"
    console.close()
    assert "tune (running: trial_0007 0s)" in console.stream.getvalue()


def test_the_tune_console_off_a_terminal_has_no_bar(capsys):
    from tune.exec.console import Console

    stream = io.StringIO()
    console = Console(total=3, progress=True, stream=stream)
    runner = object()
    assert console.watch(runner) is runner  # nothing to show the running trials on
    console.trial("trial   0 ok       val 2.5", [])
    console.bar.update(1)
    console.close()
    assert stream.getvalue() == "" and capsys.readouterr().out == "trial   0 ok       val 2.5\n"


def test_a_quiet_tune_console_keeps_a_trials_warnings_and_drops_its_line(capsys):
    from tune.exec.console import Console

    console = Console(total=2, progress=True, stream=io.StringIO(), quiet=True)
    console.trial("trial   0 ok       val 2.5", [])
    console.trial("trial   1 ok       val 2.4", ["contended: other processes kept 1.0 of 2 cores busy"])
    console.say("worker 0 [cores 0]: the storage went away")
    console.close()
    assert capsys.readouterr().out.splitlines() == ["warning: contended: other processes kept 1.0 of 2 cores busy",
                                                    "worker 0 [cores 0]: the storage went away"]


def test_quiet_tune_prints_warnings_and_where_the_results_went(tmp_path, monkeypatch, capsys):
    import tune.__main__ as tune_cli
    import tune.search.study
    from tests.test_tune import TINY_SPACE

    real = tune.search.study.run_study
    monkeypatch.setattr(tune.search.study, "run_study", lambda settings: real(settings, target=STEADY))
    space = [a for k, v in TINY_SPACE.items() for a in (f"--{k.replace('_', '-')}", ",".join(map(str, v)))]
    argv = ["--trials", "2", "--budget", "60steps", "--references", "none", "--confirm", "0", "--device", "cpu",
            "--results", str(tmp_path / "r"), "--study-name", "q", "--no-save-models", *space]
    assert tune_cli.main([*argv, "-q"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.lstrip().startswith("warning:")]
    assert lines == [f"results: {tmp_path / 'r' / 'q'} (summary.md, trials.csv, best.json, best-model/, plots)"]
    assert tune_cli.main(["report", "--results", str(tmp_path / "r"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'r' / 'q'}/trials.csv") and len(out.splitlines()) == 1
    for named in (str(tmp_path / "r" / "q"), "q"):  # a positional STUDY, as card and compare take it
        assert tune_cli.main(["report", named, "--results", str(tmp_path / "r"), "-q"]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'r' / 'q'}/trials.csv")
    assert tune_cli.main(argv) == 0  # without -q: the plan, the table (the study is complete: no trial runs)
    out = capsys.readouterr().out
    assert "study q: 2 counted trial(s) so far" in out and "loss_at_rung" in out


def test_quiet_max_batch_prints_where_the_json_went(tmp_path, monkeypatch, capsys):
    import tune.__main__ as tune_cli
    from tune.memory import maxbatch

    seen = {}
    monkeypatch.setattr(maxbatch, "settings_from_args", lambda args, runner: seen.setdefault("args", args))
    monkeypatch.setattr(maxbatch, "run_max_batch", lambda settings, runner, out: [SimpleNamespace(max_batch=8)])
    monkeypatch.setattr(maxbatch, "write_json", lambda out, settings, rows, extra: out)
    out_path = tmp_path / "mb.json"
    assert tune_cli.main(["max-batch", "--memory-limit", "1GiB", "--out", str(out_path), "-q"]) == 0
    out, err = capsys.readouterr()
    assert seen["args"].no_progress  # no line per probe either
    assert out.startswith(f"wrote {out_path} (") and len(out.splitlines()) == 1 and err == ""
