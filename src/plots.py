"""The PNG figures. Uses matplotlib's object API (no pyplot): no global state, no display needed."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.fileio import atomic_path


def _save(fig: Figure, path: Path, dpi: int) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})  # no version stamp: stable bytes


def loss_accuracy(history: list[dict], path: Path, dpi: int) -> None:
    """The course's two panels, per epoch: losses, and test accuracy as numbers on an ordered axis."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s--", label="test loss")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
    _save(fig, path, dpi)


def confusion_heatmap(confusion: list[list[int]], classes: list[str], path: Path, dpi: int) -> None:
    k = len(classes)
    counts = torch.tensor(confusion, dtype=torch.float64)
    fig = Figure(figsize=(1.2 + 0.6 * k, 1.0 + 0.55 * k), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts.log1p().numpy(), cmap="Blues")  # log: the diagonal would wash out the errors
    for i in range(k):
        for j in range(k):
            value = int(counts[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > counts.max() / 3 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    _save(fig, path, dpi)


def misclassified_grid(images: torch.Tensor, true: list[int], predicted: list[int], classes: list[str],
                       path: Path, dpi: int, limit: int) -> None:
    """The first `limit` test images the model got wrong, in test-set order, with true/predicted labels."""
    wrong = [i for i, (t, p) in enumerate(zip(true, predicted)) if t != p][:limit]
    cols = max(1, min(9, math.ceil(math.sqrt(len(wrong) or 1))))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i].numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {classes[true[i]]}\npred {classes[predicted[i]]}", fontsize=7)
    fig.suptitle(f"Misclassified test images ({len(wrong)} shown)" if wrong else "No misclassified test images")
    _save(fig, path, dpi)
