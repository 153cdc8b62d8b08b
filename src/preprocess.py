"""Raw IDX -> normalized float tensors, saved as safetensors (no pickle: loading runs no code)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from src.datasets import DatasetSpec
from src.fileio import atomic_path
from src.idx import read_split

PIXEL_MAX = 255.0


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # float32 N×(H·W), normalized
    labels: torch.Tensor  # int64 N


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W -> float32 N×(H·W) in [0, 1], as ToTensor does."""
    return images.reshape(images.shape[0], -1).to(torch.float32).div_(PIXEL_MAX)


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(x - mean) / std, as torchvision.transforms.Normalize computes it."""
    return x.sub(mean).div_(std)


def dataset_stats(x_unit: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std of every pixel, in float64 so 47 M values sum exactly enough."""
    x = x_unit.to(torch.float64)
    return float(x.mean()), float(x.std(correction=0))


def load_raw(spec: DatasetSpec, raw_dir: Path):
    """(train_images, train_labels, test_images, test_labels) as uint8 / int64, strictly parsed."""
    raw_dir = Path(raw_dir)
    f = spec.files
    kw = dict(image_shape=spec.image_shape, num_classes=len(spec.classes))
    train = read_split(raw_dir / f["train_images"], raw_dir / f["train_labels"], **kw)
    test = read_split(raw_dir / f["test_images"], raw_dir / f["test_labels"], **kw)
    return (*train, *test)


def save_split(path: Path, split: Split) -> None:
    with atomic_path(path) as tmp:
        save_file({"images": split.images.contiguous(), "labels": split.labels.contiguous()}, str(tmp))


def load_split(path: Path) -> Split:
    tensors = load_file(str(path))
    return Split(images=tensors["images"], labels=tensors["labels"])

