"""Training and evaluation loops on in-memory tensors, batched by index (no DataLoader, no per-sample work)."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from src.errors import ExplainedError
from src.fileio import progress
from src.params import BACKWARDS


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


def use_deterministic_algorithms(enabled: bool) -> None:
    """torch.use_deterministic_algorithms without its side trip: the public function also imports
    torch._inductor (about 2 s on 2 cores, in every training process) to set a torch.compile option that
    this code never uses. The switch for the kernels we run is this one call."""
    torch._C._set_deterministic_algorithms(enabled)


# Optimizer methods torch wraps in torch._disable_dynamo (torch 2.14: these four).
_DYNAMO_DISABLED_OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _skip_dynamo_import_in_optimizer_methods() -> None:
    """Every torch optimizer's constructor calls Optimizer.add_param_group (and checkpoints call state_dict /
    load_state_dict), which torch wraps in torch._disable_dynamo; on its first call each wrapper imports
    torch._dynamo (about 2 s on 2 cores, in every training process) to build a guard that only matters under
    torch.compile, which this code never uses. The wrapper keeps that guarded function on the plain one
    (`__dynamo_disable`); storing the plain function there skips the import.

    This changes torch's Optimizer class for the whole process: code that later compiles an optimizer in the
    same process would trace these methods instead of skipping them. Once torch._dynamo is loaded anyway, or in
    a torch without the attribute, nothing is changed. (The autograd path's SGD.step imports torch._dynamo
    regardless; the manual step never calls it.)"""
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_DISABLED_OPTIMIZER_METHODS:
        plain = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if plain is not None and not hasattr(plain, "__dynamo_disable"):
            plain.__dynamo_disable = plain


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, betas: tuple,
                   weight_decay: float) -> torch.optim.Optimizer:
    _skip_dynamo_import_in_optimizer_methods()
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
    Nesterov), through the same kernels autograd runs for cross-entropy and ReLU. At batch 64 on 2 CPU
    cores autograd's per-op bookkeeping and the optimizer's extra passes over the weights cost about as
    much as the matrix products; this keeps one matrix product per gradient and one pass over the weights.

    The momentum is kept in an equivalent form whose gradient accumulation is a plain `addmm_` (beta 1: a
    GEMM that also scales its output, beta = momentum, costs an extra pass over the weights):
        SGD:   buf' = m·buf + g;          p' = p - lr·buf'
        here:  u'   = u - lr/(1-m)·g;     p' = m·p + (1-m)·u'     with u = p - lr·m/(1-m)·buf
    (substitute u into p' to get SGD's p'). `u` lives for one epoch: `finish()` writes SGD's momentum buffers
    back into optimizer.state, so checkpoints, resumes and the autograd path see plain torch SGD state.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.lr, self.momentum, self.weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        self.weights = [layer.weight.detach() for layer in linears]
        self.weights_t = [w.t() for w in self.weights]  # views: they follow the in-place updates
        self.biases = [layer.bias.detach() for layer in linears]
        self.params = [p for layer in linears for p in (layer.weight, layer.bias)]
        # u in the docstring's notation; with momentum 0, u = p and the weights are updated directly.
        self.gain = -self.lr / (1.0 - self.momentum)  # u' = u + gain·g
        self.anchors = [self._anchor(p) for p in self.params]
        self.weight_anchors, self.bias_anchors = self.anchors[0::2], self.anchors[1::2]
        self.one = self.weights[0].new_ones(())  # d(loss)/d(loss), for nll_loss_backward
        self.ones = None  # batch-sized ones: the bias gradient is G^T @ ones, accumulated by addmv_

    @staticmethod
    def applies(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Only for what it implements exactly: Linear/ReLU stacks and plain (momentum) SGD."""
        layers = list(model.net) if hasattr(model, "net") else []
        shape_ok = bool(layers) and all(isinstance(m, nn.Linear) for m in layers[0::2]) and all(
            isinstance(m, nn.ReLU) for m in layers[1::2]) and isinstance(layers[-1], nn.Linear)
        group = optimizer.param_groups[0] if len(optimizer.param_groups) == 1 else {}
        sgd_ok = (type(optimizer) is torch.optim.SGD and not group.get("nesterov")
                  and group.get("dampening") == 0 and not group.get("maximize")
                  and 0 <= group.get("momentum", 0) < 1)  # the u form divides by 1 - momentum
        return shape_ok and sgd_ok

    def _anchor(self, param: nn.Parameter) -> torch.Tensor:
        """u = p - lr·m/(1-m)·buf (u = p before the first step: SGD's buffer starts as the first gradient)."""
        if not self.momentum:
            return param.detach()
        buf = self.optimizer.state[param].get("momentum_buffer")
        if buf is None:
            return param.detach().clone()
        return param.detach() - (self.lr * self.momentum / (1.0 - self.momentum)) * buf

    def finish(self) -> None:
        """Store SGD's momentum buffers, buf = (p - u)·(1-m)/(lr·m), in optimizer.state."""
        if not self.momentum:
            return
        scale = (1.0 - self.momentum) / (self.lr * self.momentum)
        for param, anchor in zip(self.params, self.anchors):
            self.optimizer.state[param]["momentum_buffer"] = (param.detach() - anchor).mul_(scale)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aten = torch.ops.aten
        weights, weights_t, biases = self.weights, self.weights_t, self.biases
        last = len(weights) - 1
        inputs = [x]  # each layer's input: x, then the ReLU outputs
        for i in range(last):
            inputs.append(torch._addmm_activation(biases[i], inputs[i], weights_t[i]))  # addmm + relu, one op
        logits = torch.addmm(biases[last], inputs[last], weights_t[last])
        # Mean cross-entropy and its gradient (softmax - onehot)/batch, as autograd computes them.
        log_probs = torch.log_softmax(logits, dim=1)
        loss, total_weight = aten.nll_loss_forward(log_probs, y, None, 1, -100)  # 1: mean
        grad = aten._log_softmax_backward_data(
            aten.nll_loss_backward(self.one, log_probs, y, None, 1, -100, total_weight),
            log_probs, 1, log_probs.dtype)
        if self.ones is None or self.ones.shape[0] < y.shape[0]:
            self.ones = torch.ones(y.shape[0], dtype=x.dtype, device=x.device)
        ones, gain = self.ones[:y.shape[0]], self.gain
        for i in range(last, -1, -1):
            grad_t = grad.t()
            if i:  # the gradient for the layer below, through ReLU, with this layer's weights before the update
                grad_below = aten.threshold_backward(grad @ weights[i], inputs[i], 0)
            if self.weight_decay:
                self.weight_anchors[i].add_(weights[i], alpha=gain * self.weight_decay)
                self.bias_anchors[i].add_(biases[i], alpha=gain * self.weight_decay)
            self.weight_anchors[i].addmm_(grad_t, inputs[i], alpha=gain)
            self.bias_anchors[i].addmv_(grad_t, ones, alpha=gain)
            if self.momentum:  # p' = m·p + (1-m)·u', right after u' is written, while it is in cache
                weights[i].lerp_(self.weight_anchors[i], 1.0 - self.momentum)
            if i:
                grad = grad_below
        if self.momentum:
            torch._foreach_lerp_(biases, self.bias_anchors, 1.0 - self.momentum)
        return loss

    def run_epoch_cpp(self, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                      batch_size: int) -> torch.Tensor:
        """Every step of one epoch (the batches of `order`) as one call into src/manual_step.cpp: the ops of
        __call__ in the same order, so the same bits, without Python between them. Per-batch losses, stacked."""
        from src.native import ops as native_ops  # here: only this path builds or loads the C++ library
        return native_ops().manual_sgd_epoch(images, labels, order, batch_size, self.weights, self.biases,
                                             self.weight_anchors, self.bias_anchors, self.gain, self.momentum,
                                             self.weight_decay)


def train_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                optimizer: torch.optim.Optimizer, generator: torch.Generator, backward: str) -> float:
    """One pass over a fresh seeded permutation; returns the mean per-sample training loss.
    backward: manual-cpp | manual (ManualReluSGDStep, as one C++ call an epoch | in Python; where it applies,
    else autograd) | autograd (autograd_step)."""
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r} ({' | '.join(BACKWARDS)})")
    model.train()
    manual = ManualReluSGDStep(model, optimizer) if backward != "autograd" and ManualReluSGDStep.applies(
        model, optimizer) else None
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    batches = order.split(batch_size)
    if manual and backward == "manual-cpp":
        losses = manual.run_epoch_cpp(images, labels, order, batch_size)
    else:
        batch_labels = labels.index_select(0, order).split(batch_size)  # one gather an epoch, not one a step
        step_losses = []
        for idx, y in zip(batches, batch_labels):
            x = images.index_select(0, idx)
            step_losses.append(manual(x, y) if manual else autograd_step(model, optimizer, x, y))
        losses = torch.stack(step_losses)
    if manual:
        manual.finish()  # momentum buffers back into optimizer.state
    sizes = torch.tensor([len(idx) for idx in batches], dtype=losses.dtype, device=images.device)
    # Mean per-sample loss; summed on the device and read once: no host sync per step.
    return float(losses @ sizes) / images.shape[0]


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
          backward: str, start_epoch: int = 1,
          on_epoch: Callable[[EpochResult], None] | None = None) -> list[EpochResult]:
    """Train epochs start_epoch..epochs; after each, evaluate on the test set and call on_epoch."""
    history = []
    with progress(epochs, "train", unit="epoch", initial=start_epoch - 1) as bar:  # silent unless a TTY
        for epoch in range(start_epoch, epochs + 1):
            history.append(_run_epoch(model, train_images, train_labels, test_images, test_labels, epoch=epoch,
                                      batch_size=batch_size, eval_batch_size=eval_batch_size,
                                      optimizer=optimizer, generator=generator, backward=backward))
            bar.update(1)
            if on_epoch:
                on_epoch(history[-1])
    return history


def _run_epoch(model, train_images, train_labels, test_images, test_labels, *, epoch, batch_size,
               eval_batch_size, optimizer, generator, backward) -> EpochResult:
    """One training pass, the non-finite-loss check, and the test evaluation."""
    t0 = time.perf_counter()
    train_loss = train_epoch(model, train_images, train_labels, batch_size=batch_size,
                             optimizer=optimizer, generator=generator, backward=backward)
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"epoch {epoch}: training loss is {train_loss}; the run diverged"
                            " (try a lower train.lr)")
    test_loss, test_accuracy, _, _ = predict(model, test_images, test_labels, batch_size=eval_batch_size)
    return EpochResult(epoch, train_loss, test_loss, test_accuracy, time.perf_counter() - t0)
