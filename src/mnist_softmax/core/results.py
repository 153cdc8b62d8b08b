"""The evaluate stage's files, written and read only here: the metrics JSON (`dvc metrics`: the headline
numbers), the per-class accuracy JSON (a `dvc plots` bar chart), the confusion matrix JSON and the
per-sample predictions CSV (`dvc plots`' confusion template; the PNGs)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mnist_softmax.fileio import read_json, write_bytes_atomic, write_json_atomic

PREDICTION_COLUMNS = ("actual", "predicted")  # class names, one row per test sample


def write_metrics(path: str | Path, summary: dict) -> None:
    write_json_atomic(path, summary)


def write_per_class(path: str | Path, rows: list[dict]) -> None:
    """[{class, accuracy}, ...] in class order."""
    write_json_atomic(path, rows)


def write_confusion(path: str | Path, classes: list[str], counts: list[list[int]]) -> None:
    """counts[i][j]: samples of actual class i predicted as class j."""
    write_json_atomic(path, {"classes": classes, "counts": counts})


def read_confusion(path: str | Path) -> list[list[int]]:
    return read_json(path)["counts"]


def write_predictions(path: str | Path, classes: list[str], actual: list[int], predicted: list[int]) -> None:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    writer.writerows((classes[t], classes[p]) for t, p in zip(actual, predicted, strict=True))
    write_bytes_atomic(path, table.getvalue().encode())


def read_predictions(path: str | Path, classes: list[str]) -> tuple[list[int], list[int]]:
    """(actual, predicted) class indices, one per test sample."""
    index = {name: i for i, name in enumerate(classes)}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [index[r["actual"]] for r in rows], [index[r["predicted"]] for r in rows]
