"""The sweep file: validated like params.yaml, every problem named with its key, value and what is allowed;
each value of the search space one that params.yaml accepts for its key."""

from __future__ import annotations

import pytest

from mnist_softmax.core.settings import ParamsError
from mnist_softmax.team.sweep_file import Categorical, FloatRange, IntRange, load_sweep, metric_of
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
