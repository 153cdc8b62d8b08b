"""A tiny, learnable, synthetic dataset in the real IDX format, and params for it.

Class k is a bright 6×6 square at its own place on a noisy 28×28 image: a small MLP learns it in a few
epochs, so tests exercise the whole pipeline in seconds. `register_tiny` makes it a valid `data.dataset`.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import struct
from pathlib import Path

import torch

from mnist_softmax.core.datasets import DATASETS, DatasetSpec, register
from tests.harness import ROOT, read_yaml, set_dotted, write_yaml

NAME = "tiny"
CLASSES = tuple(str(k) for k in range(10))
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """Encode a uint8 tensor as IDX: two zero bytes, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def normalized(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 torch images -> the preprocess stage's normalized float32 rows (core.preprocess), as a tensor."""
    from mnist_softmax.core.preprocess import normalize, to_unit

    return torch.from_numpy(normalize(to_unit(images.numpy()), mean, std))


def make_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.int64)
    for i, k in enumerate(labels.tolist()):
        r, c = 2 + 5 * (k // 5) * 2, 2 + 5 * (k % 5)
        images[i, r : r + 6, c : c + 6] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


def raw_files(n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict[str, bytes]:
    """File name -> raw IDX bytes of the four files."""
    tr_x, tr_y = make_split(n_train, seed)
    te_x, te_y = make_split(n_test, seed + 1)
    return {
        FILES["train_images"]: idx_bytes(tr_x),
        FILES["train_labels"]: idx_bytes(tr_y),
        FILES["test_images"]: idx_bytes(te_x),
        FILES["test_labels"]: idx_bytes(te_y),
    }


def write_files(folder: Path, files: dict[str, bytes], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    return folder


def checksums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def sizes(files: dict[str, bytes]) -> dict[str, int]:
    return {name: len(data) for name, data in files.items()}


def spec_for(files: dict[str, bytes], name: str = NAME) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        files=dict(FILES),
        sha256=checksums(files),
        sizes=sizes(files),
        classes=CLASSES,
        image_shape=(28, 28),
        torchvision_class=None,
    )


def register_tiny(files: dict[str, bytes], name: str = NAME) -> DatasetSpec:
    """Register in this process (stage tests call main() in-process)."""
    return register(spec_for(files, name))


def registration_code(files: dict[str, bytes], name: str = NAME) -> str:
    """Python to append to a copied project's datasets module, for tests that run real DVC processes."""
    return (
        f"\n\nregister(DatasetSpec(name={name!r}, files={dict(FILES)!r}, sha256={checksums(files)!r},"
        f" sizes={sizes(files)!r}, classes={CLASSES!r}, image_shape=(28, 28), torchvision_class=None))\n"
    )


def unregister(name: str = NAME) -> None:
    DATASETS.pop(name, None)


def tiny_params(sources: list[str], **overrides) -> dict:
    """The project's params.yaml, switched to the tiny dataset and a small fast model.
    overrides: dotted keys, e.g. {"train.epochs": 3}."""
    params = copy.deepcopy(read_yaml(ROOT / "params.yaml"))
    params["data"]["dataset"] = NAME
    params["data"]["sources"] = {NAME: list(sources)}
    params["model"]["hidden_sizes"] = [32, 16]
    params["train"].update(epochs=3, batch_size=32, lr=0.05, momentum=0.9, eval_batch_size=50, threads=1)
    params["plot"]["misclassified"] = 9
    params["plot"]["dpi"] = 40
    params["tracking"]["log_model"] = False
    return set_dotted(params, overrides)


def write_params(path: Path, params: dict) -> Path:
    return write_yaml(path, params)
