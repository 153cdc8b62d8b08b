"""Training and evaluation loops on in-memory tensors, batched by index (no DataLoader, no per-sample work)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from src.errors import ExplainedError


class NonFiniteLoss(ExplainedError, RuntimeError):
    """The training loss became NaN or infinite: the run diverged (lr too high?)."""


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, betas: tuple,
                   weight_decay: float) -> torch.optim.Optimizer:
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (sgd | adam)")


def train_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
    """One pass over a fresh seeded permutation; returns the mean per-sample training loss."""
    model.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        logits = model(images.index_select(0, idx))
        loss = nn.functional.cross_entropy(logits, labels.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * idx.numel()  # stays on device: no host sync per step
    return float(loss_sum) / n


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int):
    """(mean cross-entropy loss, accuracy in [0, 1], predicted labels, logits) over the whole set."""
    model.eval()
    logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    loss = nn.functional.cross_entropy(logits, labels, reduction="mean")
    predicted = logits.argmax(dim=1)
    accuracy = (predicted == labels).float().mean()
    return float(loss), float(accuracy), predicted, logits


def train(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
          test_images: torch.Tensor, test_labels: torch.Tensor, *, epochs: int, batch_size: int,
          eval_batch_size: int, optimizer: torch.optim.Optimizer, generator: torch.Generator,
          start_epoch: int = 1, on_epoch: Callable[[EpochResult], None] | None = None) -> list[EpochResult]:
    """Train epochs start_epoch..epochs; after each, evaluate on the test set and call on_epoch."""
    history = []
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(model, train_images, train_labels, batch_size=batch_size,
                                 optimizer=optimizer, generator=generator)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"epoch {epoch}: training loss is {train_loss}; the run diverged"
                                " (try a lower train.lr)")
        test_loss, test_accuracy, _, _ = predict(model, test_images, test_labels, batch_size=eval_batch_size)
        result = EpochResult(epoch, train_loss, test_loss, test_accuracy, time.perf_counter() - t0)
        history.append(result)
        if on_epoch:
            on_epoch(result)
    return history
