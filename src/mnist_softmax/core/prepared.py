"""The prepared folder (preprocess's output): its files are written and read only here.

A split file holds `images` (N×(H·W) float32, normalized) and `labels` (N int64) as safetensors: loading runs
no pickled code. Readers return numpy arrays; `torch.from_numpy` shares their memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mnist_softmax.fileio import atomic_path, write_json_atomic

TRAIN_FILE, TEST_FILE, INFO_FILE = "train.safetensors", "test.safetensors", "dataset.json"


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        save_file(
            {"images": np.ascontiguousarray(images), "labels": np.ascontiguousarray(labels)},
            str(tmp),
        )


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a split file."""
    arrays = load_file(str(path))
    return arrays["images"], arrays["labels"]


def save_info(prepared_dir: Path, info: dict) -> None:
    """dataset.json: dataset name, classes, image shape, split sizes, raw SHA-256s, the mean/std used."""
    write_json_atomic(Path(prepared_dir) / INFO_FILE, info)


def load_info(prepared_dir: Path) -> dict:
    """What preprocess recorded: dataset name, classes, image shape, raw SHA-256s, the mean/std used."""
    return json.loads((Path(prepared_dir) / INFO_FILE).read_text())
