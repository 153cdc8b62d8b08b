"""The strict IDX parser: good files round-trip, every kind of malformed file is refused by name."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from mnist_softmax.core.idx import IdxError, parse_idx, read_split
from tests.synthetic import idx_bytes

NAME = "data/raw/some-file-idx3-ubyte"


def header(ndim: int, dims: tuple, elem: int = 0x08) -> bytes:
    """An IDX header written by hand (not by the helper under test)."""
    return bytes([0, 0, elem, ndim]) + b"".join(struct.pack(">I", d) for d in dims)


def test_three_dim_round_trip():
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = header(3, (7, 28, 28)) + images.numpy().tobytes()
    parsed = parse_idx(data, ndim=3, name=NAME)
    assert parsed.dtype == np.uint8
    assert parsed.shape == (7, 28, 28)
    assert np.array_equal(parsed, images.numpy())


def test_one_dim_round_trip():
    labels = torch.tensor([3, 0, 9, 9, 1, 255], dtype=torch.uint8)
    data = header(1, (6,)) + bytes(labels.tolist())
    parsed = parse_idx(data, ndim=1, name=NAME)
    assert parsed.shape == (6,)
    assert np.array_equal(parsed, labels.numpy())


def test_non_square_dims_keep_their_order():
    images = torch.arange(2 * 3 * 5, dtype=torch.uint8).reshape(2, 3, 5)
    assert np.array_equal(
        parse_idx(header(3, (2, 3, 5)) + images.numpy().tobytes(), ndim=3, name=NAME),
        images.numpy(),
    )


GOOD3 = header(3, (2, 4, 4)) + bytes(range(32))
GOOD1 = header(1, (5,)) + bytes([1, 2, 3, 4, 5])

MALFORMED = {
    "empty": (b"", 3, "too short"),
    "too short": (b"\x00\x00", 1, "too short for an IDX header"),
    "gzip bytes": (gzip.compress(GOOD3, mtime=0), 3, "bad magic number 0x1f8b"),
    "html page": (b"<html><body>404 Not Found</body></html>", 3, "bad magic number 0x3c68746d"),
    "wrong element type": (
        header(3, (2, 4, 4), elem=0x0D) + bytes(32 * 4),
        3,
        "element type 0x0d, expected 0x08",
    ),
    "wrong ndim (labels as images)": (GOOD1, 3, "1 dimensions, expected 3"),
    "wrong ndim (images as labels)": (GOOD3, 1, "3 dimensions, expected 1"),
    "header cut inside dims": (header(3, (2, 4, 4))[:10], 3, "too short for a 3-dimension header"),
    "truncated": (GOOD3[:-1], 3, "truncated"),
    "trailing bytes": (GOOD3 + b"\x00", 3, "trailing bytes"),
    "truncated labels": (GOOD1[:-2], 1, "truncated"),
}


@pytest.mark.parametrize("data, ndim, problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_names_file_and_problem(data, ndim, problem):
    with pytest.raises(IdxError) as err:
        parse_idx(data, ndim=ndim, name=NAME)
    assert NAME in str(err.value)
    assert problem in str(err.value)


def test_size_message_states_byte_counts():
    with pytest.raises(IdxError, match=r"47 bytes, but its header \[2, 4, 4\] needs 48"):
        parse_idx(GOOD3[:-1], ndim=3, name=NAME)


def test_idx_error_is_a_value_error():
    """Callers that catch ValueError (and the stage runner, through ExplainedError) see it."""
    from mnist_softmax.errors import ExplainedError

    assert issubclass(IdxError, ValueError) and issubclass(IdxError, ExplainedError)


# ---- read_split: the two files of a split, checked against each other and the dataset ---------------


def write_split(tmp_path, images: torch.Tensor, labels: torch.Tensor):
    ip, lp = tmp_path / "imgs-idx3-ubyte", tmp_path / "lbls-idx1-ubyte"
    ip.write_bytes(idx_bytes(images))
    lp.write_bytes(idx_bytes(labels))
    return ip, lp


def test_read_split_good(tmp_path):
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12, dtype=torch.uint8) % 10
    ip, lp = write_split(tmp_path, images, labels)
    got_x, got_y = read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert np.array_equal(got_x, images.numpy())
    assert got_y.dtype == np.int64
    assert got_y.tolist() == labels.tolist()


def test_read_split_count_mismatch(tmp_path):
    ip, lp = write_split(tmp_path, torch.zeros(10, 28, 28, dtype=torch.uint8), torch.zeros(9, dtype=torch.uint8))
    with pytest.raises(IdxError) as err:
        read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    msg = str(err.value)
    assert str(lp) in msg and str(ip) in msg and "9 labels for 10 images" in msg


def test_read_split_wrong_image_shape(tmp_path):
    ip, lp = write_split(tmp_path, torch.zeros(4, 27, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(IdxError) as err:
        read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert str(ip) in str(err.value)
    assert "(27, 28), expected (28, 28)" in str(err.value)


@pytest.mark.parametrize("bad_label", [10, 255])
def test_read_split_label_out_of_range(tmp_path, bad_label):
    labels = torch.tensor([0, 1, bad_label, 2], dtype=torch.uint8)
    ip, lp = write_split(tmp_path, torch.zeros(4, 28, 28, dtype=torch.uint8), labels)
    with pytest.raises(IdxError) as err:
        read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert str(lp) in str(err.value)
    assert f"label {bad_label} outside 0..9" in str(err.value)


def test_read_split_highest_label_is_accepted(tmp_path):
    labels = torch.tensor([9, 0], dtype=torch.uint8)
    ip, lp = write_split(tmp_path, torch.zeros(2, 28, 28, dtype=torch.uint8), labels)
    _, got = read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert got.tolist() == [9, 0]


def test_read_split_zero_items(tmp_path):
    ip, lp = write_split(tmp_path, torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8))
    with pytest.raises(IdxError) as err:
        read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert str(ip) in str(err.value) and "no items" in str(err.value)


def test_read_split_malformed_file_is_named(tmp_path):
    ip, lp = write_split(tmp_path, torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))
    lp.write_bytes(lp.read_bytes() + b"junk")
    with pytest.raises(IdxError) as err:
        read_split(ip, lp, image_shape=(28, 28), num_classes=10)
    assert str(lp) in str(err.value) and "trailing bytes" in str(err.value)


def test_zero_item_file_parses_to_an_empty_array():
    """A well-formed IDX file with no items is not malformed: the parser returns an empty array (read_split
    then refuses it as a split with no items)."""
    parsed = parse_idx(header(3, (0, 28, 28)), ndim=3, name=NAME)
    assert parsed.shape == (0, 28, 28) and parsed.dtype == np.uint8
