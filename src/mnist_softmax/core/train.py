"""The training loop: the textbook step (forward, cross-entropy, backward, optimizer step) on preloaded tensors.

Fast only through torch's public switches: the data sits on the device once and each batch is gathered by
index, the optimizer is fused, per-step losses stay on the device and are read once an epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.history import EpochResult
from mnist_softmax.errors import ExplainedError
from mnist_softmax.fileio import progress


class NonFiniteLoss(ExplainedError, RuntimeError):
    """The training loss became NaN or infinite: the run diverged (lr too high?)."""


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda -> a torch.device; cuda without a GPU is an error, not a silent fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def use_deterministic_algorithms(device: torch.device) -> None:
    """Same params, data, device and thread count -> the same bits, as torch's reproducibility notes say.
    Only CUDA needs the switch: every CPU kernel this model uses is deterministic already, and the switch
    imports torch's compiler packages (~1.5 s a stage)."""
    if device.type != "cuda":
        return
    # cuBLAS is deterministic only with a fixed workspace, set before its first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, betas: tuple, weight_decay: float
) -> torch.optim.Optimizer:
    """torch's SGD or Adam, fused: one kernel updates every parameter."""
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r} (sgd | adam)")


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> float:
    """One pass over a fresh seeded permutation; returns the mean per-sample training loss."""
    model.train()
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    batches = order.split(batch_size)
    batch_labels = labels.index_select(0, order).split(batch_size)  # one gather an epoch, not one a step
    losses = []
    for idx, y in zip(batches, batch_labels):
        loss = nn.functional.cross_entropy(model(images.index_select(0, idx)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    sizes = torch.tensor([len(idx) for idx in batches], dtype=losses[0].dtype, device=images.device)
    # Mean per-sample loss, summed on the device and read once: no host sync per step.
    return float(torch.stack(losses) @ sizes) / images.shape[0]


def train(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    start_epoch: int = 1,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train epochs start_epoch..epochs; after each, evaluate on the test set and call on_epoch."""
    history = []
    with progress(epochs, "train", unit="epoch", initial=start_epoch - 1) as bar:  # silent unless a TTY
        for epoch in range(start_epoch, epochs + 1):
            t0 = time.perf_counter()
            train_loss = train_epoch(
                model,
                train_images,
                train_labels,
                batch_size=batch_size,
                optimizer=optimizer,
                generator=generator,
            )
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(
                    f"epoch {epoch}: training loss is {train_loss}; the run diverged (try a lower train.lr)"
                )
            test = predict(model, test_images, test_labels, batch_size=eval_batch_size)
            history.append(EpochResult(epoch, train_loss, test.loss, test.accuracy, time.perf_counter() - t0))
            bar.update(1)
            if on_epoch:
                on_epoch(history[-1])
    return history
