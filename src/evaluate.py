"""Final evaluation numbers from labels and predictions."""
from __future__ import annotations

import torch


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[i, j] = how many samples of true class i were predicted as j."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class: correct / present (0.0 for a class absent from the test set)."""
    present = confusion.sum(dim=1)
    correct = confusion.diagonal()
    return [float(c) / float(n) if n else 0.0 for c, n in zip(correct, present)]


def evaluation_summary(loss: float, accuracy: float, confusion: torch.Tensor, classes: list[str]) -> dict:
    """The metrics file DVC shows: overall accuracy and loss, then accuracy per class."""
    return {
        "test_accuracy": round(accuracy, 6),
        "test_loss": round(loss, 6),
        "per_class_accuracy": {name: round(acc, 6) for name, acc in zip(classes, per_class_accuracy(confusion))},
    }
