"""The MLP: shapes, parameter count, activations, and the model file (weights_only, reproducible bytes)."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
import torch
from torch import nn

from mnist_softmax.core.model import (
    ACTIVATIONS,
    MLP,
    architecture,
    build,
    count_params,
    load_model,
    save_model,
)

DEFAULT_HIDDEN = [512, 256, 128, 64]


def expected_param_count(sizes):
    """sum over Linear layers of in*out weights + out biases."""
    return sum(i * o + o for i, o in itertools.pairwise(sizes))


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_flat_input_gives_logits_per_class(batch):
    torch.manual_seed(0)
    model = MLP(784, DEFAULT_HIDDEN, 10, "relu")
    out = model(torch.randn(batch, 784))
    assert out.shape == (batch, 10)


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 1, 28, 28)])
def test_image_input_is_flattened(shape):
    torch.manual_seed(0)
    model = MLP(784, [16], 10, "relu").eval()
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, model(x.reshape(3, 784)), rtol=0, atol=0)


def test_default_architecture_has_575050_parameters():
    model = MLP(784, DEFAULT_HIDDEN, 10, "relu")
    expected = expected_param_count([784, *DEFAULT_HIDDEN, 10])
    assert count_params(model) == expected == 575_050
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_layer_structure():
    model = MLP(784, [32, 16], 10, "tanh")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2
    assert isinstance(list(model.net)[-1], nn.Linear)  # raw logits out, no softmax layer


@pytest.mark.parametrize(
    "activation, cls",
    [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid), ("gelu", nn.GELU)],
)
def test_each_activation_builds_and_runs(activation, cls):
    assert set(ACTIVATIONS) == {"relu", "tanh", "sigmoid", "gelu"}
    model = build(architecture(784, (8, 4), 10, activation))
    assert sum(isinstance(m, cls) for m in model.modules()) == 2
    out = model(torch.rand(2, 784))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_architecture_is_plain_data():
    arch = architecture(784, (32, 16), 10, "gelu")
    assert arch == {
        "in_features": 784,
        "hidden_sizes": [32, 16],
        "num_classes": 10,
        "activation": "gelu",
    }


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    arch = architecture(784, [32, 16], 10, "relu")
    model = build(arch)
    path = tmp_path / "model.pt"
    save_model(path, model, arch)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"arch", "state_dict"}
    loaded, loaded_arch = load_model(path)
    assert loaded_arch == arch
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temp file left


def test_saving_the_same_model_twice_gives_identical_bytes(tmp_path):
    """DVC caches model.pt by content: same weights must give the same file, whatever temp name was used."""
    torch.manual_seed(3)
    arch = architecture(784, [32, 16], 10, "relu")
    model = build(arch)
    save_model(tmp_path / "a.pt", model, arch)
    save_model(tmp_path / "b.pt", model, arch)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pt", "b.pt")]
    assert digest[0] == digest[1]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_model_refuses_a_file_whose_unpickling_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"arch": _Payload(marker), "state_dict": {}}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_model(path)
    assert not marker.exists()
    # The file really is hostile: a full unpickle runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_model_refuses_a_foreign_weights_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a model file"):
        load_model(path)


def test_load_model_refuses_garbage(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match="refused to load"):
        load_model(path)


def test_load_model_refuses_an_architecture_params_yaml_could_not_make_before_building_it(tmp_path):
    """A ~1 KB file naming a 50,000 x 4,096 layer: built, it would take ~800 MB before any check."""
    path = tmp_path / "huge.pt"
    torch.save({"arch": architecture(784, [50_000, 4096], 10, "relu"), "state_dict": {}}, path)
    assert path.stat().st_size < 4096
    with pytest.raises(
        ValueError, match=r"architecture is invalid:\n  - hidden_sizes.0 = 50000: .*less than or equal to 4096"
    ):
        load_model(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("net.2.bias"), "are not the layers its architecture names"),
        (lambda s: s.__setitem__("net.0.weight", torch.zeros(16, 783)), r"net.0.weight is torch.float32 \(16, 783\)"),
        (lambda s: s.__setitem__("net.2.bias", s["net.2.bias"].double()), r"net.2.bias is torch.float64 \(10,\)"),
    ],
)
def test_load_model_refuses_weights_that_are_not_its_architecture_s(tmp_path, change, message):
    arch = architecture(784, [16], 10, "relu")
    state = dict(build(arch).state_dict())
    change(state)
    path = tmp_path / "model.pt"
    torch.save({"arch": arch, "state_dict": state}, path)
    with pytest.raises(ValueError, match=message):
        load_model(path)
