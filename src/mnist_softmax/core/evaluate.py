"""Evaluation: a model's predictions on a split, and the final numbers made from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Prediction:
    loss: float  # mean cross-entropy
    accuracy: float  # in [0, 1]
    predicted: torch.Tensor  # class index per sample
    logits: torch.Tensor


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int) -> Prediction:
    """The model's logits, predicted classes, mean loss and accuracy over a whole split."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)
    predicted = logits.argmax(dim=1)
    return Prediction(
        loss=float(nn.functional.cross_entropy(logits, labels)),
        accuracy=float((predicted == labels).float().mean()),
        predicted=predicted,
        logits=logits,
    )


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[i, j] = how many samples of true class i were predicted as j."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class: correct / present (0.0 for a class absent from the test set)."""
    present = confusion.sum(dim=1)
    correct = confusion.diagonal()
    return [float(c) / float(n) if n else 0.0 for c, n in zip(correct, present)]


def evaluation_summary(loss: float, accuracy: float) -> dict[str, float]:
    """The headline numbers `dvc metrics show` and `dvc exp show` list: overall accuracy and loss."""
    return {"test_accuracy": round(accuracy, 6), "test_loss": round(loss, 6)}


def per_class_table(confusion: torch.Tensor, classes: list[str]) -> list[dict]:
    """Accuracy per class, one row each (`dvc plots` draws it as bars): the detail behind the headline."""
    return [{"class": name, "accuracy": round(acc, 6)} for name, acc in zip(classes, per_class_accuracy(confusion))]


def summary_metrics(summary: dict[str, float]) -> dict[str, float]:
    """The MLflow run's final_* metrics. Per-class accuracy is no metric: the UI would draw ten charts of it above
    the training curves; it is in the run's per_class_accuracy.json."""
    return {"final_test_accuracy": summary["test_accuracy"], "final_test_loss": summary["test_loss"]}
