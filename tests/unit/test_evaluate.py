"""Confusion matrix and per-class accuracy against naive loops."""

from __future__ import annotations

import pytest
import torch

from mnist_softmax.core.evaluate import (
    confusion_matrix,
    evaluation_summary,
    per_class_accuracy,
    per_class_table,
    summary_metrics,
)


def naive_confusion(labels, predicted, k):
    counts = [[0] * k for _ in range(k)]
    for t, p in zip(labels.tolist(), predicted.tolist()):
        counts[t][p] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_a_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (500,), generator=g)
    predicted = torch.where(torch.rand(500, generator=g) < 0.7, labels, torch.randint(0, 10, (500,), generator=g))
    cm = confusion_matrix(labels, predicted, 10)
    assert cm.shape == (10, 10)
    assert cm.tolist() == naive_confusion(labels, predicted, 10)
    assert int(cm.sum()) == 500


def test_confusion_matrix_orientation_rows_are_true_classes():
    cm = confusion_matrix(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 2]), 3)
    assert cm.tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, 1]]


def test_confusion_matrix_accepts_uint8_labels():
    cm = confusion_matrix(torch.tensor([9, 9], dtype=torch.uint8), torch.tensor([9, 3]), 10)
    assert cm[9, 9] == 1 and cm[9, 3] == 1 and int(cm.sum()) == 2


def test_per_class_accuracy_with_an_absent_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 3])
    predicted = torch.tensor([0, 1, 0, 1, 0, 3])
    acc = per_class_accuracy(confusion_matrix(labels, predicted, 4))
    expected = []
    for k in range(4):
        present = [(t, p) for t, p in zip(labels.tolist(), predicted.tolist()) if t == k]
        expected.append(sum(t == p for t, p in present) / len(present) if present else 0.0)
    assert acc == pytest.approx(expected)
    assert acc[2] == 0.0  # class 2 never occurs


def test_evaluation_summary_shape():
    labels, predicted = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])
    cm = confusion_matrix(labels, predicted, 2)
    summary = evaluation_summary(0.1234567891, 2 / 3)
    assert summary == {"test_accuracy": round(2 / 3, 6), "test_loss": 0.123457}
    per_class = per_class_table(cm, ["zero", "one"])
    assert per_class == [{"class": "zero", "accuracy": 1.0}, {"class": "one", "accuracy": 0.5}]
    assert summary_metrics(summary) == {"final_test_accuracy": round(2 / 3, 6), "final_test_loss": 0.123457}
