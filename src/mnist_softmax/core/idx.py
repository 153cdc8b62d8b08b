"""Strict reader for the IDX format of the MNIST files (http://yann.lecun.com/exdb/mnist/)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from mnist_softmax.errors import ExplainedError

UBYTE = 0x08  # the only element type the MNIST-style files use


class IdxError(ExplainedError, ValueError):
    """A file is not the IDX file it should be; the message names the file and the problem."""


def parse_idx(data: bytes, *, ndim: int, name: str) -> np.ndarray:
    """Parse IDX bytes holding unsigned bytes in `ndim` dimensions into a uint8 array (a read-only view of
    `data`: no copy)."""
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes, too short for an IDX header")
    if data[0:2] != b"\x00\x00":
        raise IdxError(
            f"{name}: bad magic number 0x{data[:4].hex()} (an IDX file starts with two zero bytes;"
            " is it still gzip-compressed or an HTML page?)"
        )
    if data[2] != UBYTE:
        raise IdxError(f"{name}: element type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    if data[3] != ndim:
        raise IdxError(f"{name}: {data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: {len(data)} bytes, too short for a {ndim}-dimension header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise IdxError(
            f"{name}: {len(data)} bytes, but its header {list(dims)} needs {expected}"
            f" ({'truncated' if len(data) < expected else 'trailing bytes'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_split(images_path: Path, labels_path: Path, *, image_shape: tuple, num_classes: int):
    """One split: (uint8 images N×H×W, int64 labels N) as numpy arrays, checked against each other and the
    dataset."""
    images = parse_idx(Path(images_path).read_bytes(), ndim=3, name=str(images_path))
    labels = parse_idx(Path(labels_path).read_bytes(), ndim=1, name=str(labels_path))
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise IdxError(f"{images_path}: images are {tuple(images.shape[1:])}, expected {tuple(image_shape)}")
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}")
    if images.shape[0] == 0:
        raise IdxError(f"{images_path}: holds no items")
    if labels.size and int(labels.max()) >= num_classes:
        raise IdxError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images, labels.astype(np.int64)
