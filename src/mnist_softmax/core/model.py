"""The course's softmax classifier: an MLP with raw logits out (CrossEntropyLoss applies the softmax)."""

from __future__ import annotations

import torch
from torch import nn

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
    """Rebuild a saved model. weights_only=True: a file whose unpickling would run code is refused."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, zipfile errors: all mean "not our model file"
        raise ValueError(f"{path}: refused to load as a model (weights_only=True): {e}") from e
    if not isinstance(saved, dict) or set(saved) != {"arch", "state_dict"}:
        raise ValueError(f"{path}: not a model file of this pipeline (expected keys arch, state_dict)")
    model = build(saved["arch"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved["arch"]
