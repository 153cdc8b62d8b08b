"""The prepared folder's layout and torch-free readers (the plot stage does not need torch's 2 s import)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

# File names inside the prepared folder (the folder itself is the stage's declared output).
TRAIN_FILE, TEST_FILE, INFO_FILE = "train.safetensors", "test.safetensors", "dataset.json"


def load_info(prepared_dir: Path) -> dict:
    """What preprocess recorded: dataset name, classes, raw SHA-256s, the mean/std used."""
    return json.loads((Path(prepared_dir) / INFO_FILE).read_text())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """A split file as numpy arrays: images (N×(H·W) float32, normalized), labels (N int64)."""
    return load_file(str(path))
