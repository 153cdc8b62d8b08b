"""The course's softmax classifier: an MLP with raw logits out (CrossEntropyLoss applies the softmax)."""

from __future__ import annotations

import itertools
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from mnist_softmax.core.params import LAYER_MAX, Activation, HiddenSizes
from mnist_softmax.core.settings import StrictModel, validate
from mnist_softmax.fileio import atomic_path

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_sizes: tuple | list, num_classes: int, activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def architecture(in_features: int, hidden_sizes, num_classes: int, activation: str) -> dict:
    """The arguments of MLP as plain data, stored beside the weights so a model file rebuilds itself."""
    return {
        "in_features": in_features,
        "hidden_sizes": list(hidden_sizes),
        "num_classes": num_classes,
        "activation": activation,
    }


class Architecture(StrictModel):
    """What a model file may ask to build: the bounds of params.yaml, the input and output layers included."""

    in_features: Annotated[int, Field(ge=1, le=LAYER_MAX)]
    hidden_sizes: HiddenSizes  # type: ignore[valid-type]
    num_classes: Annotated[int, Field(ge=2, le=LAYER_MAX)]
    activation: Activation


def checked_architecture(arch, source: str) -> dict:
    """`arch` from a file, refused (ParamsError naming the key) unless params.yaml could have made it: a tiny
    file must not make build() allocate gigabytes."""
    validate(Architecture, arch, f"{source}'s architecture")
    return arch


def check_weights(state: dict, arch: dict, source: str) -> None:
    """Refuse weights that are not exactly the float32 tensors of `arch`'s layers (before they are copied)."""
    widths = [arch["in_features"], *arch["hidden_sizes"], arch["num_classes"]]
    expected: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):  # Sequential: Linear at 0, 2, 4, ...
        expected |= {f"net.{2 * i}.weight": (fan_out, fan_in), f"net.{2 * i}.bias": (fan_out,)}
    if not isinstance(state, dict) or set(state) != set(expected):
        raise ValueError(f"{source}: its weights are not the layers its architecture names ({', '.join(expected)})")
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{source}: weight {name} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
            found = f"{tensor.dtype} {tuple(tensor.shape)}"
            raise ValueError(f"{source}: weight {name} is {found}, its architecture needs float32 {shape}")


def build(arch: dict) -> MLP:
    return MLP(arch["in_features"], arch["hidden_sizes"], arch["num_classes"], arch["activation"])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(path, model: MLP, arch: dict) -> None:
    """Weights plus architecture, written atomically; loadable with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Save through a file object: given a path, torch.save names the zip's inner folder after the (random)
    # temp file name, and the same weights would give different bytes on every save.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"arch": arch, "state_dict": state}, f)


def load_model(path) -> tuple[MLP, dict]:
    """Rebuild a saved model. weights_only=True: a file whose unpickling would run code is refused; mmap: its
    tensors are read from the file, never allocated at sizes it claims; the architecture and weights are checked
    before anything is built."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError, RuntimeError, zipfile errors: all mean "not our model file"
        raise ValueError(f"{path}: refused to load as a model (weights_only=True): {e}") from e
    if not isinstance(saved, dict) or set(saved) != {"arch", "state_dict"}:
        raise ValueError(f"{path}: not a model file of this pipeline (expected keys arch, state_dict)")
    arch = checked_architecture(saved["arch"], str(path))
    check_weights(saved["state_dict"], arch, str(path))
    model = build(arch)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), arch
