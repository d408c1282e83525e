"""`python -m tune --config study.toml` (#23.7): the file holds any of the tuner's flags, the command line overrides
it, a bad file is one line and exit 2 with nothing created, and the study records the file's text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CORPUS, ROOT, run_cli
from tests.test_search_defects import command
from tune.__main__ import build_parser, settings_from_args
from tune.core.budget import Budget
from tune.core.studyfile import StudyFile, parse_args


def write(tmp_path, text: str, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parsed(argv):
    return parse_args(build_parser(), [str(a) for a in argv])


def test_the_command_line_overrides_the_file_and_the_file_overrides_the_defaults(tmp_path):
    path = write(tmp_path, 'trials = 7\nbudget = "30s"\nseed = 5\nno-save-models = true\nn-layer = [2, 3]\n'
                           'references = ["baby", "tiny"]\nlearning-rate = "1e-4,1e-3"\n')
    args = parsed(["--config", path, "--trials", "3", "--n-layer", "4"])
    assert args.trials == 3 and args.space_n_layer == (4, 4)  # given on the command line: its values
    assert args.budget == Budget(30, "s") and args.seed == 5 and args.no_save_models is True  # from the file
    assert args.references == ("baby", "tiny") and args.space_learning_rate == (1e-4, 1e-3)
    assert args.sampler == build_parser().parse_args([]).sampler  # in neither: the default
    assert args.study_file == StudyFile(str(path), path.read_text())


def test_a_file_starting_with_a_byte_order_mark_reads_as_toml(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbftrials = 7\n")  # as Windows Notepad saves UTF-8
    assert parsed(["--config", path]).trials == 7


def test_every_flag_in_a_file_makes_the_settings_its_command_line_makes(tmp_path):
    """Each flag of a command line that moves most of them off their defaults, written as a file instead."""
    argv, lines = command(tmp_path), []
    flags = {a: a for a in argv if a.startswith("--")}
    for i, arg in enumerate(argv):
        if arg in flags:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            lines.append(f"{arg[2:]} = {'true' if value is None else repr(value)}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    from_file = settings_from_args(parsed(["--config", path]))
    assert from_file.study_file is not None and from_file.flat() == settings_from_args(parsed(argv)).flat()


@pytest.mark.parametrize(("text", "expected"), [
    ("trails = 3\n", "study.toml: trails: not a flag of the tuner (did you mean trials?)"),
    ("reduction_factor = 3\n", "reduction_factor: not a flag of the tuner (did you mean reduction-factor?)"),
    ("[search]\ntrials = 3\n", "study.toml: search: not a flag of the tuner"),
    ('config = "other.toml"\n', "study.toml: config: a study file cannot name another"),
])
def test_an_unknown_key_is_one_line_naming_the_file_and_the_key(tmp_path, capfd, text, expected):
    code, _, err = run_cli("tune", ["--config", str(write(tmp_path, text)), "--results", str(tmp_path / "r")], capfd)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("trials = 2.5\n", "trials: expected a positive integer, got '2.5'"),
    ('trials = "many"\n', "trials: expected a positive integer, got 'many'"),
    ("trials = true\n", "trials: expected a string, a number or a list of them (the flag's value), got true"),
    ("device = 0\n", "device: expected a string, got 0"),
    ('quiet = "yes"\n', 'quiet: expected true or false, got "yes"'),
    ('pruner = "sometimes"\n', "pruner: invalid choice: 'sometimes'"),
    ("n-layer = [2, 3, 4]\n", "n-layer: expected LOW,HIGH or one number, got '2,3,4'"),
    ("budget = { minutes = 3 }\n", "budget: expected a string, a number or a list of them (the flag's value), "
                                   "got a table"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key_and_what_was_expected(tmp_path, capfd, text,
                                                                                      expected):
    code, _, err = run_cli("tune", ["--config", str(write(tmp_path, text)), "--results", str(tmp_path / "r")], capfd)
    assert code == 2 and err.count("\n") == 1 and f"--config {tmp_path / 'study.toml'}: {expected}" in err, err
    assert not (tmp_path / "r").exists()


def test_a_file_that_is_not_toml_names_the_file_and_where_it_broke(tmp_path, capfd):
    code, _, err = run_cli("tune", ["--config", str(write(tmp_path, 'trials = 3\nbudget = "10m\n')),
                                      "--results", str(tmp_path / "r")], capfd)
    assert code == 2 and err.count("\n") == 1 and "study.toml: not valid TOML" in err and "line 2" in err, err
    # best.json is what `gptcore train --config` takes: the likely mix-up is named.
    code, _, err = run_cli("tune", ["--config", str(write(tmp_path, '{"n_layer": 4}', "best.json"))], capfd)
    assert code == 2 and "is for `python -m gptcore train --config`" in err, err
    assert not (tmp_path / "r").exists()


def test_a_missing_file_is_one_line(tmp_path, capfd):
    code, _, err = run_cli("tune", ["--config", str(tmp_path / "none.toml"), "--results", str(tmp_path / "r")],
                             capfd)
    assert code == 2 and err == f"python -m tune: error: --config {tmp_path / 'none.toml'}: no such file " \
                                "(expected a TOML file of the tuner's flags)\n"
    assert not (tmp_path / "r").exists()


def test_the_study_records_the_file_text_with_the_invocation(tmp_path):
    from tune.core.provenance import invocations
    from tune.exec.runner import TrialRunner
    from tune.search.session import open_session

    text = (f'# a comment is kept too\ntrials = 1\nbudget = "20steps"\nreferences = "none"\nconfirm = 0\n'
            f'device = "cpu"\ndata = "{CORPUS}"\nstudy-name = "f"\nn-layer = 1\n')
    path = write(tmp_path, text)
    session = open_session(settings_from_args(parsed(["--config", path, "--results", tmp_path / "r"])),
                           TrialRunner())
    try:
        (call,) = invocations(session.study)
        assert call["study_file"] == {"path": str(path), "text": text}
        assert session.study.user_attrs["settings"]["trials"] == 1
    finally:
        session.close()
    assert (tmp_path / "r" / "f").is_dir()  # --results from the command line, the study's name from the file


def test_the_console_refuses_a_bad_file_in_one_line_and_creates_nothing(tmp_path):
    """The one real process: `python -m tune --config` as typed, from a folder of its own."""
    path = write(tmp_path, "trials = 0\n")
    proc = subprocess.run([sys.executable, "-m", "tune", "--config", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"python -m tune: error: --config {path}: trials: expected a positive integer, got '0'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]  # no results/, no study


def test_a_value_from_the_file_refused_after_parsing_names_the_file_and_the_command_line_s_does_not(tmp_path, capfd):
    path = write(tmp_path, 'compile = "graphs"\ntrials = 1\n')  # parses as a flag; refused later without CUDA
    base = ["--config", str(path), "--device", "cpu", "--data", str(CORPUS), "--results", str(tmp_path / "r")]
    code, _, err = run_cli("tune", base, capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--config {path}: compile: --compile graphs needs a CUDA device" in err
    code, _, err = run_cli("tune", [*base, "--compile", "graphs"], capfd)  # the command line's own value
    assert code == 2 and "--compile graphs needs a CUDA device" in err and "--config" not in err
    assert not (tmp_path / "r").exists()
