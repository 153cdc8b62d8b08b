"""The sweep file: validated like params.yaml, every problem named with its key, value and what is allowed;
each value of the search space one that params.yaml accepts for its key."""

from __future__ import annotations

import os

import pytest

from mnist_softmax.core.settings import ParamsError
from mnist_softmax.team.sweep_file import (
    Categorical,
    FloatRange,
    IntRange,
    differences,
    dvc_would_write,
    fingerprint,
    load_sweep,
    metric_of,
    override,
    settings_problems,
)
from tests.harness import ROOT

PARAMS = ROOT / "params.yaml"
GOOD = """study: lr-sweep
objective: {metric: test_accuracy, direction: maximize}
trials: 8
space:
  train.lr: {type: float, low: 0.001, high: 0.1, log: true}
  train.batch_size: {type: int, low: 32, high: 256, step: 32}
  model.activation: {type: categorical, choices: [relu, gelu]}
pruning: {warmup_epochs: 2}
"""


def load(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_sweep(path, PARAMS)


def test_a_good_sweep_file_loads(tmp_path):
    sweep = load(tmp_path, GOOD)
    assert sweep.study == "lr-sweep" and sweep.trials == 8 and sweep.pruning.warmup_epochs == 2
    assert sweep.space["train.lr"] == FloatRange(type="float", low=0.001, high=0.1, log=True)
    assert isinstance(sweep.space["train.batch_size"], IntRange) and sweep.space["train.batch_size"].step == 32
    assert sweep.space["model.activation"] == Categorical(type="categorical", choices=["relu", "gelu"])


@pytest.mark.parametrize(
    "change, says",
    [
        (("study: lr-sweep", "study: Lr Sweep"), "study = 'Lr Sweep': String should match pattern"),
        (
            ("direction: maximize", "direction: up"),
            "objective.direction = 'up': Input should be 'maximize' or",
        ),
        (("trials: 8", "trials: 0"), "trials = 0: Input should be greater than or equal to 1"),
        (("trials: 8", "trials: 8\nextra: 1"), "extra: unknown key"),
        (("train.lr:", "train.l_r:"), "space.train.l_r: not a key of"),
        (
            ("low: 0.001, high: 0.1", "low: 0.1, high: 0.001"),
            "space.train.lr: low must be below high",
        ),
        (
            ("low: 0.001, high: 0.1", "low: 0.001, high: 5000000.0"),
            "space.train.lr = 5000000.0: params.yaml would"
            " refuse it (train.lr = 5000000.0: Input should be"
            " less than or equal to 1000000",
        ),
        (
            ("choices: [relu, gelu]", "choices: [relu, swish]"),
            "space.model.activation = 'swish': params.yaml would",
        ),
        (
            ("low: 32, high: 256", "low: 0, high: 256"),
            "space.train.batch_size = 0: params.yaml would refuse it",
        ),
        (("type: categorical", "type: list"), "space.model.activation"),
        (
            ("metric: test_accuracy", "metric: per_class_accuracy.3"),
            "pruning needs an objective the train stage",
        ),
        (("trials: 8", "trials: &n 8\nagain: *n"), "aliases are not allowed"),
        (
            ("  model.activation:", "  tracking.experiment: {type: categorical, choices: ['${oc.env:HOME}']}\n  x:"),
            "space.tracking.experiment = '${oc.env:HOME}': -S tracking.experiment='${oc.env:HOME}': DVC would"
            " write another value into params.yaml",
        ),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_the_problem(tmp_path, change, says):
    old, new = change
    with pytest.raises(ParamsError) as err:
        load(tmp_path, GOOD.replace(old, new, 1))
    assert says in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value)


def test_metric_of_reads_dotted_keys_of_the_metrics_file():
    metrics = {"test_accuracy": 0.97, "per_class_accuracy": {"3": 0.95}}
    assert metric_of(metrics, "test_accuracy") == 0.97
    assert metric_of(metrics, "per_class_accuracy.3") == 0.95


@pytest.mark.parametrize(
    "dotted, says",
    [
        ("test_acc", "no metric test_acc (there is: test_accuracy, per_class_accuracy, name)"),
        ("per_class_accuracy.7", "no metric per_class_accuracy.7 (there is: 3)"),
        ("test_accuracy.top1", "no metric test_accuracy.top1 (there is: float)"),
        ("per_class_accuracy", "metric per_class_accuracy is not a number: {'3': 0.95}"),
        ("name", "metric name is not a number: 'x'"),
    ],
)
def test_metric_of_names_what_there_is_when_the_metric_is_not_there(dotted, says):
    with pytest.raises(ValueError) as err:
        metric_of({"test_accuracy": 0.97, "per_class_accuracy": {"3": 0.95}, "name": "x"}, dotted)
    assert str(err.value) == says


# ---- what `dvc exp run -S` writes: DVC's own code (Hydra's override parser, OmegaConf) on a copy --------


@pytest.mark.parametrize(
    "value",
    [
        "relu",
        "a,b",
        "it's",
        "a\\",
        "a\\'b",
        "x\\\\",
        "null",
        "true",
        "1e-3",
        "[1,2]",
        "{a: 1}",
        "sp ace",
        "'",
        "é",
        "=x",
    ],
)
def test_a_string_lands_in_params_yaml_exactly_as_validated(tmp_path, value):
    setting = override("tracking.experiment", value)
    assert settings_problems(PARAMS, [setting], {"tracking.experiment": value}) == []
    assert dvc_would_write(PARAMS, [setting])["tracking"]["experiment"] == value


@pytest.mark.parametrize("key, value", [("train.lr", 1e-05), ("train.lr", 0.123456789012345), ("train.epochs", 3)])
def test_a_number_lands_as_the_same_number(key, value):
    setting = override(key, value)
    assert settings_problems(PARAMS, [setting], {key: value}) == []
    section, name = key.split(".")
    landed = dvc_would_write(PARAMS, [setting])[section][name]
    assert landed == value and type(landed) is type(value)


@pytest.mark.parametrize(
    "setting, says",
    [
        ("train.threads=1,2", "-S train.threads=1,2: a list of values (a Hydra sweep), not one value"),
        ("train.lr=range(1,3)", "a list of values (a Hydra sweep)"),
        ("tracking.experiment=${oc.env:HOME}", "DVC would write another value into params.yaml"),
        ("tracking.experiment='${oc.env:HOME}'", "DVC would write another value into params.yaml"),
        ("tracking.experiment=${train.lr}", "DVC would write another value into params.yaml"),
        ("train.lr=[1", "not one value in DVC's -S grammar"),
        ("train.lr='0.1'", "train.lr = '0.1': Input should be a valid number"),
        ("+train.l_r=1", "train.l_r: unknown key"),
    ],
)
def test_a_setting_that_would_not_land_as_read_is_refused(setting, says):
    problems = settings_problems(PARAMS, [setting], {})
    assert problems and says in problems[0], problems
    assert not any(os.environ["HOME"] in p for p in problems)  # a resolved value is never shown


def test_a_setting_in_dvc_grammar_is_taken_as_dvc_reads_it():
    assert settings_problems(PARAMS, ["train.lr=1e-3", "model.hidden_sizes=[8,4]"], {}) == []
    landed = dvc_would_write(PARAMS, ["train.lr=1e-3", "model.hidden_sizes=[8,4]"])
    assert landed["train"]["lr"] == 0.001 and landed["model"]["hidden_sizes"] == [8, 4]


# ---- the study's fingerprint --------------------------------------------------------------------------


def test_the_fingerprint_names_every_difference_but_the_study_name(tmp_path):
    mine = load(tmp_path, GOOD)
    other = load(
        tmp_path,
        GOOD.replace("study: lr-sweep", "study: other")
        .replace("test_accuracy, direction: maximize", "test_loss, direction: minimize")
        .replace("trials: 8", "trials: 9")
        .replace("high: 0.1", "high: 0.2")
        .replace("  model.activation: {type: categorical, choices: [relu, gelu]}\n", ""),
    )
    assert differences(fingerprint(mine), fingerprint(mine)) == []
    assert differences(fingerprint(mine), fingerprint(other)) == [
        'objective.direction: the study\'s is "maximize", this worker\'s "minimize"',
        'objective.metric: the study\'s is "test_accuracy", this worker\'s "test_loss"',
        'space.model.activation: the study\'s is {"type": "categorical", "choices": ["relu", "gelu"]},'
        " this worker's null",
        "space.train.lr.high: the study's is 0.1, this worker's 0.2",
        "trials: the study's is 8, this worker's 9",
    ]


def test_the_fingerprint_covers_the_heartbeat_the_set_values_and_the_unswept_params(tmp_path):
    """Workers of one study must run its trials alike: the same heartbeat (one worker's grace period would
    fail another's healthy trials), --set values and params.yaml outside the space."""
    sweep = load(tmp_path, GOOD)
    params = PARAMS.read_text()
    swept = tmp_path / "swept.yaml"  # only a swept key differs: each trial sets it anyway
    swept.write_text(params.replace("  lr: 0.01", "  lr: 0.05", 1))
    other = tmp_path / "other.yaml"
    other.write_text(params.replace("  epochs: 10", "  epochs: 11", 1))
    assert swept.read_text() != params and other.read_text() != params

    study = fingerprint(sweep, 10, ["train.threads=1"], PARAMS)
    assert differences(study, fingerprint(sweep, 10, ["train.threads=1"], swept)) == []
    found = differences(study, fingerprint(sweep, 1, ["train.threads=2"], other))
    assert found[:2] == [
        "--heartbeat: the study's is 10, this worker's 1",
        '--set: the study\'s is ["train.threads=1"], this worker\'s ["train.threads=2"]',
    ]
    assert len(found) == 3 and found[2].startswith("params.yaml outside the space (sha256): the study's is"), found
