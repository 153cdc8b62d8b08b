"""The PNG figures, from numpy arrays. matplotlib's object API (no pyplot): no global state, no display needed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnist_softmax.fileio import atomic_path


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
    counts = np.asarray(confusion, dtype=np.float64)
    fig = Figure(figsize=(1.2 + 0.6 * k, 1.0 + 0.55 * k), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.log1p(counts), cmap="Blues")  # log: the diagonal would wash out the errors
    for i in range(k):
        for j in range(k):
            value = int(counts[i, j])
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if counts[i, j] > counts.max() / 3 else "black",
            )
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (test set)")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    _save(fig, path, dpi)


def misclassified_grid(
    images: np.ndarray,
    true: list[int],
    predicted: list[int],
    classes: list[str],
    path: Path,
    dpi: int,
    limit: int,
) -> None:
    """The first `limit` test images the model got wrong, in test-set order, with true/predicted labels.
    Drawn as one mosaic image in one axes: an axes per digit is far slower to lay out."""
    wrong = [i for i, (t, p) in enumerate(zip(true, predicted)) if t != p][:limit]
    cols = max(1, min(9, math.ceil(math.sqrt(len(wrong) or 1))))
    rows = max(1, math.ceil(len(wrong) / cols))
    height, width = images.shape[1:3]
    cell_h, cell_w = height + 12, width + 4  # room under each digit for its two label lines
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan)  # NaN: blank (drawn in the background colour)
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / (1.7 * rows + 0.4)))
    ax.axis("off")
    for n, i in enumerate(wrong):
        top, left = (n // cols) * cell_h, (n % cols) * cell_w + 2
        mosaic[top : top + height, left : left + width] = images[i]
        ax.text(
            left + width / 2,
            top + height + 1,
            f"true {classes[true[i]]}\npred {classes[predicted[i]]}",
            ha="center",
            va="top",
            fontsize=7,
        )
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    fig.suptitle(f"Misclassified test images ({len(wrong)} shown)" if wrong else "No misclassified test images")
    _save(fig, path, dpi)
