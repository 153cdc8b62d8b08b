"""SHA-256 of files and verification of a fetched set against the pinned hashes."""

from __future__ import annotations

import hashlib
import os

import pytest

from mnist_softmax.core.datasets import DATASETS, dataset_digest
from mnist_softmax.core.download import ChecksumError, SourceError, verify
from mnist_softmax.fileio import CHUNK, sha256_file
from tests.synthetic import raw_files, spec_for, write_files


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 17])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files():
    return raw_files(n_train=30, n_test=10)


def test_verify_accepts_the_pinned_files(tmp_path, files):
    verify(spec_for(files), write_files(tmp_path, files), "dir:/somewhere")


@pytest.mark.parametrize("victim", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("position", [0, 16, -1])
def test_verify_rejects_one_flipped_byte(tmp_path, files, victim, position):
    folder = write_files(tmp_path, files)
    data = bytearray(files[victim])
    data[position] ^= 0x01
    (folder / victim).write_bytes(bytes(data))
    source = "dir:/mirror/of/tiny"
    with pytest.raises(ChecksumError) as err:
        verify(spec_for(files), folder, source)
    msg = str(err.value)
    assert victim in msg and source in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg  # what it got
    assert hashlib.sha256(files[victim]).hexdigest() in msg  # what it expected
    assert isinstance(err.value, SourceError)  # so download() moves on to the next source


def test_real_datasets_pin_four_distinct_sha256():
    for spec in (DATASETS["mnist"], DATASETS["fashion-mnist"]):
        assert len(spec.sha256) == 4 and len(set(spec.sha256.values())) == 4
        assert set(spec.sha256) == set(spec.files.values())
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in spec.sha256.values())


def test_dataset_digest_is_order_independent_and_sensitive(files):
    sums = spec_for(files).sha256
    reordered = dict(reversed(list(sums.items())))
    assert dataset_digest(sums) == dataset_digest(reordered)
    changed = {**sums, "train-images-idx3-ubyte": "0" * 64}
    assert dataset_digest(changed) != dataset_digest(sums)
