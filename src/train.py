"""Training and evaluation loops on in-memory tensors, batched by index (no DataLoader, no per-sample work)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from src.errors import ExplainedError
from src.fileio import progress


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
    """auto | cpu | cuda -> a torch.device; cuda without a GPU is an error, not a silent fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available (use auto or cpu)")
        # cuBLAS is deterministic only with a fixed workspace; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(name)


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, betas: tuple,
                   weight_decay: float) -> torch.optim.Optimizer:
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (sgd | adam)")


def autograd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """The textbook step: forward, cross-entropy, autograd backward, optimizer step. Returns the loss."""
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class ManualReluSGDStep:
    """Forward, hand-written backward and SGD update of a ReLU MLP, in place, without an autograd graph.

    The same math as `autograd_step` with torch.optim.SGD (momentum, weight decay, no dampening or
    Nesterov): gradients of mean cross-entropy through addmm+ReLU layers. At batch 64 on 2 CPU cores
    autograd's per-op bookkeeping costs about as much as the matrix products; this removes it.
    Momentum buffers live in optimizer.state, so checkpoints and a switch back to autograd see them.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD):
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.lr, self.momentum, self.weight_decay = group["lr"], group["momentum"], group["weight_decay"]

    @staticmethod
    def applies(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Only for what it implements exactly: Linear/ReLU stacks and plain (momentum) SGD."""
        layers = list(model.net) if hasattr(model, "net") else []
        shape_ok = bool(layers) and all(isinstance(m, nn.Linear) for m in layers[0::2]) and all(
            isinstance(m, nn.ReLU) for m in layers[1::2]) and isinstance(layers[-1], nn.Linear)
        group = optimizer.param_groups[0] if len(optimizer.param_groups) == 1 else {}
        sgd_ok = (type(optimizer) is torch.optim.SGD and not group.get("nesterov")
                  and group.get("dampening") == 0 and not group.get("maximize"))
        return shape_ok and sgd_ok

    def _update(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """torch.optim.SGD's update: grad += wd·param; buf = momentum·buf + grad; param -= lr·buf."""
        if self.weight_decay:
            grad.add_(param, alpha=self.weight_decay)
        if self.momentum:
            state = self.optimizer.state[param]
            buf = state.get("momentum_buffer")
            if buf is None:
                state["momentum_buffer"] = buf = grad.clone()
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = buf
        param.sub_(grad, alpha=self.lr)

    def _update_weight(self, param: torch.Tensor, grad_out_t: torch.Tensor, layer_input: torch.Tensor) -> None:
        """_update for a weight whose gradient is grad_out_t @ layer_input, with the momentum step fused into
        the matrix product (buf = momentum·buf + grad in one pass): the update is memory-bound at batch 64."""
        buf = self.optimizer.state[param].get("momentum_buffer") if self.momentum else None
        if buf is None:
            self._update(param, grad_out_t @ layer_input)
            return
        buf.addmm_(grad_out_t, layer_input, beta=self.momentum)
        if self.weight_decay:
            buf.add_(param, alpha=self.weight_decay)
        param.sub_(buf, alpha=self.lr)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        h = x
        last = len(self.linears) - 1
        for i, layer in enumerate(self.linears):
            h = torch.addmm(layer.bias, h, layer.weight.t())
            if i < last:
                h.relu_()
            outputs.append(h)
        log_probs = h.log_softmax(dim=1)
        rows = torch.arange(y.shape[0], device=y.device)
        loss = -log_probs[rows, y].mean()
        grad = log_probs.exp_()  # d(mean CE)/d(logits) = (softmax - onehot) / batch
        grad[rows, y] -= 1.0
        grad.div_(y.shape[0])
        for i in range(last, -1, -1):
            layer, grad_out = self.linears[i], grad
            if i > 0:  # ReLU's gradient: pass where its output was positive (uses the weight before its update)
                grad = (grad_out @ layer.weight).mul_(outputs[i] > 0)
            self._update_weight(layer.weight, grad_out.t(), outputs[i])
            self._update(layer.bias, grad_out.sum(dim=0))
        return loss


def train_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                optimizer: torch.optim.Optimizer, generator: torch.Generator, manual_step: bool) -> float:
    """One pass over a fresh seeded permutation; returns the mean per-sample training loss.
    manual_step: use ManualReluSGDStep where it applies (else the autograd step)."""
    model.train()
    if manual_step and ManualReluSGDStep.applies(model, optimizer):
        step = ManualReluSGDStep(model, optimizer)
    else:
        step = lambda x, y: autograd_step(model, optimizer, x, y)  # noqa: E731
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        loss = step(images.index_select(0, idx), labels.index_select(0, idx))
        loss_sum += loss * idx.numel()  # stays on device: no host sync per step
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
          manual_step: bool, start_epoch: int = 1,
          on_epoch: Callable[[EpochResult], None] | None = None) -> list[EpochResult]:
    """Train epochs start_epoch..epochs; after each, evaluate on the test set and call on_epoch."""
    history = []
    with progress(epochs, "train", unit="epoch", initial=start_epoch - 1) as bar:  # silent unless a TTY
        for epoch in range(start_epoch, epochs + 1):
            history.append(_run_epoch(model, train_images, train_labels, test_images, test_labels, epoch=epoch,
                                      batch_size=batch_size, eval_batch_size=eval_batch_size,
                                      optimizer=optimizer, generator=generator, manual_step=manual_step))
            bar.update(1)
            if on_epoch:
                on_epoch(history[-1])
    return history


def _run_epoch(model, train_images, train_labels, test_images, test_labels, *, epoch, batch_size,
               eval_batch_size, optimizer, generator, manual_step) -> EpochResult:
    """One training pass, the non-finite-loss check, and the test evaluation."""
    t0 = time.perf_counter()
    train_loss = train_epoch(model, train_images, train_labels, batch_size=batch_size,
                             optimizer=optimizer, generator=generator, manual_step=manual_step)
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"epoch {epoch}: training loss is {train_loss}; the run diverged"
                            " (try a lower train.lr)")
    test_loss, test_accuracy, _, _ = predict(model, test_images, test_labels, batch_size=eval_batch_size)
    return EpochResult(epoch, train_loss, test_loss, test_accuracy, time.perf_counter() - t0)
