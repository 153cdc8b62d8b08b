"""The prepared splits as torch tensors, for the stages that train and evaluate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # float32 N×(H·W), normalized
    labels: torch.Tensor  # int64 N


def load_split(path: Path) -> Split:
    """A split file written by src.preprocess.save_split."""
    tensors = load_file(str(path))
    return Split(images=tensors["images"], labels=tensors["labels"])
