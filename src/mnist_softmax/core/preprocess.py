"""Raw IDX -> normalized float32 arrays, in numpy.

The arithmetic is torchvision's, in the same float32 order (ToTensor: x / 255; Normalize: (x - mean) / std),
so the bytes equal what torchvision computes (a unit test compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from mnist_softmax.core.datasets import DatasetSpec
from mnist_softmax.core.idx import read_split

PIXEL_MAX = np.float32(255.0)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W -> float32 N×(H·W) in [0, 1], as ToTensor does."""
    return images.reshape(images.shape[0], -1).astype(np.float32) / PIXEL_MAX


def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std in float32, as torchvision.transforms.Normalize computes it."""
    out = np.subtract(x, np.float32(mean), dtype=np.float32)
    return np.divide(out, np.float32(std), out=out)


def to_pixels(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Normalized rows back to the 0-255 pixels they were made from (float32)."""
    return np.rint((x * np.float32(std) + np.float32(mean)) * PIXEL_MAX).clip(0, PIXEL_MAX).astype(np.float32)


def dataset_stats(x_unit: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of every pixel, in float64 so 47 M values sum exactly enough."""
    x = x_unit.astype(np.float64)
    return float(x.mean()), float(x.std(ddof=0))


def load_raw(spec: DatasetSpec, raw_dir: Path):
    """(train_images, train_labels, test_images, test_labels) as uint8 / int64 arrays, strictly parsed."""
    raw_dir = Path(raw_dir)
    f = spec.files
    kw: dict[str, Any] = dict(image_shape=spec.image_shape, num_classes=len(spec.classes))
    train = read_split(raw_dir / f["train_images"], raw_dir / f["train_labels"], **kw)
    test = read_split(raw_dir / f["test_images"], raw_dir / f["test_labels"], **kw)
    return (*train, *test)


def normalization(
    mean: float | Literal["auto"], std: float | Literal["auto"], train_unit: np.ndarray
) -> tuple[float, float]:
    """The mean and std to normalize with: the params' numbers, or for `auto` the training split's own."""
    auto_mean, auto_std = dataset_stats(train_unit) if "auto" in (mean, std) else (None, None)
    if mean == "auto":
        assert auto_mean is not None  # computed above: "auto" is one of the two
        mean = auto_mean
    if std == "auto":
        assert auto_std is not None
        std = auto_std
    return mean, std
