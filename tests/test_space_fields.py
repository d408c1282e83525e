"""Any ModelConfig/TrainConfig field searched beside the six (#23.2): the format, its one-line refusals, the values
reaching the trial, and a tiny real study whose checkpoints, trials.csv, summary.md and best.json carry them."""

import json

import optuna
import pandas as pd
import pytest

from gptcore.config import from_dict
from gptcore.errors import UserError
from tests.conftest import CORPUS, run_cli
from tests.test_tune import TINY_SPACE, settings
from tune.core.budget import Budget, RungPlan
from tune.core.space import PARAMS, SPACES, Space, load_space, parse_param_flag
from tune.search.settings import TuneSettings
from tune.search.strategy import SAMPLERS, make_sampler
from tune.search.study import run_study

EXTRA = {"dropout": {"float": [0.0, 0.3]}, "weight_decay": {"float": [1e-3, 0.3], "log": True}}


def session_of(space: Space):
    from tune.search.session import Session

    return Session(TuneSettings(), None, None, space, {"device": "cpu"}, {"vocab_size": 80}, None, None,
                   "float32", None, Budget(10, "s"), RungPlan.for_budget(Budget(10, "s")), [], (), None)


def saved_config(checkpoint):
    """The configs a checkpoint folder's config.json holds (it also says which model kind it is)."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    return from_dict({"model": cfg["model"], "train": cfg["train"]})


# --- the format -------------------------------------------------------------------------------------------------


def test_the_space_file_and_the_param_flag_read_the_same_format(tmp_path):
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"n_layer": [1, 2], "dropout": [0.0, 0.3], "weight_decay": {"float": [1e-3, 0.3],
                                                                                         "log": True},
                             "grad_accum_steps": {"int": [1, 4]}, "activation": ["relu", "gelu"],
                             "beta2": [0.9, 0.99], "warmup_iters": {"int": [0, 100], "step": 10}}))
    from_file = load_space(str(f), "cpu", None, {})
    flags = dict(pair for text in ["n_layer=1,2", "dropout=0.0,0.3; weight_decay=1e-3,0.3,log",
                                   "grad_accum_steps=1,4", "activation=relu|gelu", "beta2=0.9,0.99",
                                   "warmup_iters=0,100,step=10"] for pair in parse_param_flag(text))
    from_flags = load_space("small", "cpu", None, {}, flags)
    assert from_file == from_flags
    assert from_file.names == (*PARAMS, "dropout", "weight_decay", "grad_accum_steps", "activation", "beta2",
                               "warmup_iters")
    recorded = from_file.to_dict()  # what the fingerprint and the settings hold, in the file's own form
    assert recorded["weight_decay"] == {"float": [1e-3, 0.3], "log": True}
    assert recorded["activation"] == {"choice": ["relu", "gelu"]}
    assert Space.from_dict(recorded).describe() == from_file.describe()
    assert "| weight_decay | 0.001 .. 0.3 | log-uniform |" in from_file.describe()
    assert "| warmup_iters | 0 .. 100 | integers in steps of 10 |" in from_file.describe()


def test_a_space_of_the_six_draws_and_records_exactly_what_it_did_before():
    space = SPACES["small"]
    assert list(space.to_dict()) == list(PARAMS) and space.extra == ()
    trial = optuna.create_study().ask()
    assert list(space.suggest(trial)) == list(PARAMS)
    assert set(trial.params) == {"log2(batch_size)", "log2(block_size)", "n_embed", "log2(n_head)", "n_layer",
                                 "learning_rate"}


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "cmaes"])
def test_every_sampler_draws_valid_values_of_every_kind(sampler):
    space = load_space("small", "cpu", None, {}, {**EXTRA, "grad_accum_steps": {"int": [1, 3]},
                                                  "activation": {"choice": ["relu", "gelu"]}})
    study = optuna.create_study(sampler=make_sampler(sampler, 0))
    for i in range(8):
        trial = study.ask()
        values = space.suggest(trial)
        assert space.contains(values) and Space.decode(trial.params) == values
        study.tell(trial, float(i % 3))
    assert {t.params["activation"] for t in study.trials} <= {"relu", "gelu"}


# --- refusals: one line, exit 2, nothing created ------------------------------------------------------------------


@pytest.mark.parametrize("entry, needle", [
    ({"dropout": [0.0, 1.0]}, "dropout 1: dropout must be in [0, 1)"),
    ({"max_iters": [10, 20]}, "max_iters is not searched: the target budget sets it"),
    ({"seed": [1, 2]}, "seed is not searched: --seed sets it"),
    ({"betas": [0.9, 0.99]}, "search its elements instead: beta1, beta2"),
    ({"mlp_ratio": [2, 4]}, "unknown parameter 'mlp_ratio'; expected one of the six"),
    ({"dropout": {"int": [0, 1]}}, "an integer range for a field that is not an integer"),
    ({"weight_decay": {"float": [0, 0.3], "log": True}}, "a log range needs low > 0"),
    ({"grad_accum_steps": {"int": [1, 4], "step": 2}}, "must be a whole number of steps of 2"),
    ({"grad_accum_steps": [0, 4]}, "grad_accum_steps 0: grad_accum_steps must be a positive integer"),
    ({"norm": {"choice": ["post", "middle"]}}, "norm middle: norm must be one of post, pre"),
    ({"activation": {"choice": []}}, "choices must be a non-empty list"),
    ({"dropout": [0.3, 0.1]}, "the range must have low <= high"),
    ({"dropout": {"float": [0, 0.3], "base": 2}}, "expected one of the keys int, float or choice"),
    ({"beta2": [0.9, 1.0]}, "beta2 1: betas must be two numbers in [0, 1)"),
    ({"dropout": [0, 0.1, 0.2]}, "expected a range [low, high] of numbers"),
])
@pytest.mark.parametrize("how", ["file", "flag"])
def test_a_bad_entry_is_one_line_naming_it_exit_2_and_nothing_created(entry, needle, how, tmp_path, capfd,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    name, spec = next(iter(entry.items()))
    if how == "file":
        (tmp_path / "space.json").write_text(json.dumps(entry))
        args, where = ["--space", "space.json"], "--space space.json: "
    else:
        args, where = ["--param", f"{name}={json.dumps(spec)}"], f"--param {name}: "
    code, _, err = run_cli("tune", ["--trials", "1", "--budget", "20steps", "--device", "cpu", "--results",
                                    str(tmp_path / "r"), "--no-progress", *args], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert where in err and name in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["space.json"] if how == "file" else [])


@pytest.mark.parametrize("text", ["dropout", "=0,1", "dropout=", "dropout={bad json"])
def test_a_malformed_param_flag_is_one_line_exit_2(text, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("tune", ["--device", "cpu", "--param", text], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--param" in err, err
    assert list(tmp_path.iterdir()) == []


# --- the values reach the trial -----------------------------------------------------------------------------------


def test_drawn_values_go_into_the_trials_model_and_train_configs():
    from tune.search.session import reference_configs, trial_configs

    space = load_space("small", "cpu", None, {}, {**EXTRA, "beta2": [0.9, 0.95],
                                                  "activation": {"choice": ["relu", "gelu"]}})
    params = space.suggest(optuna.trial.FixedTrial({
        "log2(batch_size)": 3, "log2(block_size)": 5, "n_embed": 128, "log2(n_head)": 2, "n_layer": 2,
        "learning_rate": 1e-3, "dropout": 0.25, "weight_decay": 0.01, "beta2": 0.93, "activation": "gelu"}))
    session = session_of(space)
    model, train = trial_configs(params, session)
    m, t = from_dict({"model": model, "train": train})
    assert (m.dropout, m.activation, t.weight_decay, t.betas) == (0.25, "gelu", 0.01, (0.9, 0.93))
    # A reference trains what a trial would without the search (dropout 0, the config's defaults), and its
    # row shows those values.
    ref_model, ref_train = reference_configs("baby", session)
    assert space.values_in(ref_model, ref_train) == {"dropout": 0.0, "weight_decay": 0.1, "beta2": 0.99,
                                                     "activation": "relu"}


def test_a_user_models_declared_fields_are_searched_into_the_models_extra():
    """The interface with --model (#23.1): a model's declared fields, given as extra_fields, are searched and sent
    under the model config's `extra`; without them the same name is unknown."""
    from tune.search.session import trial_configs

    with pytest.raises(UserError, match="unknown parameter 'mlp_ratio'"):
        load_space("small", "cpu", None, {}, {"mlp_ratio": [2, 4]})
    declared = {"mlp_ratio": 4, "rotary": False}
    space = load_space("small", "cpu", None, {}, {"mlp_ratio": [2, 6], "rotary": [True, False]},
                       extra_fields=declared)
    with pytest.raises(UserError, match="mlp_ratio 2.5: the model declares it as int"):
        load_space("small", "cpu", None, {}, {"mlp_ratio": {"choice": [2.5]}}, extra_fields=declared)
    params = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask())
    model, train = trial_configs(params, session_of(space))
    assert model["extra"] == {"mlp_ratio": params["mlp_ratio"], "rotary": params["rotary"]}
    assert 2 <= model["extra"]["mlp_ratio"] <= 6 and "mlp_ratio" not in train



@pytest.mark.parametrize("name, spec", [("activation", ["relu", "gelu"]), ("norm", ["post", "pre"]),
                                        ("bias", [True, False])])
def test_gptcore_s_own_architecture_fields_are_refused_for_a_user_model_and_searched_for_gptcore(name, spec):
    assert load_space("small", "cpu", None, {}, {name: spec}).to_dict()  # gptcore's GPT builds them
    with pytest.raises(UserError, match=f"--param {name}: {name} is gptcore's GPT's own field"):
        load_space("small", "cpu", None, {}, {name: spec}, extra_fields={"mlp_ratio": 4})
    with pytest.raises(UserError, match=f"--param {name}: {name} is gptcore's GPT's own field"):
        load_space("small", "cpu", None, {}, {name: spec}, extra_fields={})  # a class declaring nothing

# --- a tiny real study ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """3 trials of 60 steps and one reference, searching dropout and weight decay beside the six; the best
    configuration confirmed by 2 more runs."""
    return run_study(settings(tmp_path_factory.mktemp("fields"), trials=3, budget=Budget(60, "steps"),
                              references=("tiny",), space_params=EXTRA, keep_models=5, confirm=1, confirm_rule="all"))


def test_the_study_trains_the_drawn_values_and_every_output_shows_them(searched):
    folder = searched.results_dir
    df = pd.read_csv(folder / "trials.csv")
    columns = list(df.columns)
    assert columns[columns.index("learning_rate") + 1:][:2] == ["dropout", "weight_decay"]
    confirms = df[df["confirm_of"].notna()]
    trials = df[df["reference"].isna() & df["confirm_of"].isna()]
    assert len(trials) == 3 and trials["dropout"].between(0, 0.3).all()
    assert trials["weight_decay"].between(1e-3, 0.3).all() and trials["dropout"].nunique() == 3
    ref = df[df["reference"] == "tiny"].iloc[0]
    assert (ref["dropout"], ref["weight_decay"]) == (0.0, 0.1)  # what a trial trains without the search
    for _, row in df[df["checkpoint"].notna()].iterrows():  # each kept model trained its row's values
        model, train = saved_config(folder / "checkpoints" / row["checkpoint"].rsplit("/", 1)[-1])
        assert (model.dropout, train.weight_decay) == pytest.approx((row["dropout"], row["weight_decay"]))
    # A confirmation run trains its configuration's drawn values again (with another seed).
    assert len(confirms) == 2
    for _, run in confirms.iterrows():
        source = df[(df["trial"] == run["confirm_of"].removeprefix("trial ")) | (df["trial"] == run["confirm_of"])]
        model, train = from_dict(json.loads(run["config"]))
        assert (model.dropout, train.weight_decay) == tuple(source.iloc[0][["dropout", "weight_decay"]])
        assert (run["dropout"], run["weight_decay"]) == tuple(source.iloc[0][["dropout", "weight_decay"]])
    best = json.loads((folder / "best.json").read_text())
    model, train = from_dict(best)
    winner = df.loc[df["val_loss"].idxmin()]
    assert (model.dropout, train.weight_decay) == pytest.approx((winner["dropout"], winner["weight_decay"]))
    summary = (folder / "summary.md").read_text()
    assert "| dropout | 0 .. 0.3 | uniform |" in summary and "| weight_decay | 0.001 .. 0.3 | log-uniform |" in summary
    top = summary[summary.index("## Top 10"):summary.index("## Out-of-memory")]
    header = next(line for line in top.splitlines() if line.startswith("| trial"))
    assert [c.strip() for c in header.split("|")][8:11] == ["lr", "dropout", "weight_decay"]
    assert "| `dropout` |" in summary  # the columns' glossary
    assert set(searched.study.trials[0].params) >= {"dropout", "weight_decay", "log2(batch_size)"}
    assert searched.study.user_attrs["fingerprint"]["space"]["dropout"] == {"float": [0.0, 0.3]}


def test_best_json_trains_the_searched_values_again(searched, tmp_path, capfd):
    out = tmp_path / "again"
    code, _, err = run_cli("gptcore", ["train", "--config", str(searched.results_dir / "best.json"), "--data",
                                       str(CORPUS), "--out", str(out), "--device", "cpu", "--no-progress"], capfd)
    assert code == 0, err
    model, train = saved_config(out)
    best_model, best_train = from_dict(json.loads((searched.results_dir / "best.json").read_text()))
    assert (model.dropout, train.weight_decay) == (best_model.dropout, best_train.weight_decay)


def test_a_resume_with_another_extra_field_range_is_refused(searched, tmp_path):
    import shutil

    shutil.copytree(searched.results_dir.parent, tmp_path / "results")
    changed = {**EXTRA, "dropout": {"float": [0.0, 0.5]}}
    with pytest.raises(UserError, match="space:"):
        run_study(settings(tmp_path, trials=4, budget=Budget(60, "steps"), references=("tiny",),
                           space_params=changed))
    with pytest.raises(UserError, match="space:"):  # a field searched no more is a change too
        run_study(settings(tmp_path, trials=4, budget=Budget(60, "steps"), references=("tiny",)))


def test_a_warm_start_reads_the_extra_columns_or_the_recorded_config(searched):
    from tune.core import schema
    from tune.search.warmstart import best_configs

    frame = schema.from_csv(pd.read_csv(searched.results_dir / "trials.csv"))
    space = load_space("small", "cpu", None, TINY_SPACE, {**EXTRA, "grad_clip": [0.5, 2.0]})
    best = [c for c in best_configs(frame, "loss", "old", space=space) if "ref" not in c.label]
    assert len(best) == 3 and all(space.contains(c.values) for c in best)
    for c in best:  # dropout from its column; grad_clip, not searched there, from the config it trained
        row = frame[(frame["dropout"] - c.values["dropout"]).abs() < 1e-12].iloc[0]
        assert c.values["weight_decay"] == pytest.approx(row["weight_decay"]) and c.values["grad_clip"] == 1.0
    enqueued = Space.encode(best[0].values)
    assert Space.decode(enqueued) == best[0].values and enqueued["dropout"] == best[0].values["dropout"]


def test_the_importance_plot_names_the_extra_fields():
    from tune.report.plots import MIN_IMPORTANCE_TRIALS, importance_plot

    space = load_space("small", "cpu", None, {}, {**EXTRA, "activation": {"choice": ["relu", "gelu"]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: space.suggest(t)["dropout"] * 10, n_trials=MIN_IMPORTANCE_TRIALS + 2)
    drawn = []

    def save(fig, name):
        drawn.append((name, {t.get_text() for t in fig.axes[0].get_yticklabels()}))

    assert importance_plot(study, save) is None
    assert drawn[0][0] == "importances.png" and {"dropout", "weight decay", "activation"} <= drawn[0][1]


def test_a_study_file_and_the_command_line_add_param_entries(tmp_path):
    from tune.__main__ import build_parser, settings_from_args
    from tune.core import studyfile

    toml = tmp_path / "study.toml"
    toml.write_text('param = "dropout=0,0.3; beta2=0.9,0.999"\n')
    args = studyfile.parse_args(build_parser(), ["--config", str(toml), "--param", "weight_decay=0.01,0.1,log",
                                                 "--param", "dropout=0.1"])
    assert settings_from_args(args).search.space_params == {
        "dropout": 0.1, "beta2": [0.9, 0.999], "weight_decay": {"float": [0.01, 0.1], "log": True}}


@pytest.mark.parametrize("params, needle", [
    ({"drop\nout": [0, 0.1]}, "--param 'drop\\nout': unknown parameter 'drop\\nout'"),
    ({"activation": {"choice": ["relu", "ge\nlu"]}}, "activation 'ge\\nlu': activation must be one of"),
    ({"x" * 500: 1}, "unknown parameter 'xxxxxxxx"),
])
def test_a_hostile_name_or_value_stays_one_line(params, needle):
    with pytest.raises(UserError) as info:
        load_space("small", "cpu", None, {}, params)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600 and needle in message, message


def test_the_card_shows_the_extra_fields_of_the_winner_and_of_every_configuration(searched, tmp_path):
    import re
    import shutil

    from tune.report.card.command import main as card

    folder = tmp_path / "s"
    shutil.copytree(searched.results_dir, folder)
    assert card([str(folder), "--no-matmul", "-q"]) == 0
    page = (folder / "card.html").read_text()
    df = pd.read_csv(folder / "trials.csv")
    winner = df.loc[df["val_loss"].idxmin()]
    best = re.search(r'<section id="best">(.*?)</section>', page, re.S).group(1)
    headers = re.findall(r"<th>(.*?)</th>", best)
    assert headers[headers.index("learning_rate") + 1:][:2] == ["dropout", "weight_decay"]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", best)
    assert cells[headers.index("dropout")] == f"{winner['dropout']:.3g}"
    tried = re.search(r'<section id="loss">(.*?)</section>', page, re.S).group(1)
    assert "<th>dropout</th><th>weight_decay</th><th>flags</th>" in tried


def test_compare_shows_a_searched_field_beside_a_study_that_did_not_search_it(searched, tmp_path):
    import shutil

    from tune.report.compare.command import main as compare

    shutil.copytree(searched.results_dir, tmp_path / "fields")
    six = run_study(settings(tmp_path / "six", trials=2, budget=Budget(60, "steps"), references=("tiny",)))
    shutil.copytree(six.results_dir, tmp_path / "six-only")
    assert compare([str(tmp_path / "fields"), str(tmp_path / "six-only"), "--out", str(tmp_path / "out"),
                    "-q"]) == 0
    text = (tmp_path / "out" / "compare.md").read_text()
    best = text[text.index("## Best configuration"):]
    dropout = next(line for line in best.splitlines() if line.startswith("| dropout"))
    assert [c.strip() for c in dropout.split("|")][3] == "-"  # the study of the six did not search it
    assert [c.strip() for c in dropout.split("|")][2] != "-"


@pytest.mark.parametrize("sampler, module", [("qmc", "scipy.stats"), ("cmaes", "cmaes")])
def test_a_sampler_whose_package_is_missing_is_one_line_naming_the_extra(sampler, module, monkeypatch):
    import sys

    from tune.search.strategy import make_sampler

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: its import raises ImportError
    with pytest.raises(UserError, match=rf"^--sampler {sampler} needs the .* package: pip install -e '\.\[replay\]'"):
        make_sampler(sampler, 0)
