"""Stage preprocess, in-process: safetensors + dataset.json, normalization checked against torchvision."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision import transforms

from mnist_softmax.core.idx import IdxError
from tests import synthetic
from tests.stages.helpers import (
    packages_imported_by,
    preprocess_argv,
    run_preprocess,
    staging_leftovers,
)
from tests.synthetic import write_files


def decode(data: bytes, ndim: int) -> np.ndarray:
    """IDX decoded with numpy, independently of mnist_softmax.core.idx."""
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def reference(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    return torch.stack([tf(img[:, :, None]).reshape(-1) for img in images])


def write_raw(tiny, files):
    return write_files(tiny.paths["raw"], files)


def test_writes_normalized_splits_and_info(tiny):
    params = tiny.params()
    write_raw(tiny, tiny.files)
    run_preprocess(tiny, params)
    out = tiny.paths["prepared"]
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "test.safetensors",
        "train.safetensors",
    ]
    assert staging_leftovers(out.parent) == []
    for split, prefix, n in (("train", "train", 300), ("test", "t10k", 100)):
        tensors = load_file(str(out / f"{split}.safetensors"))
        assert set(tensors) == {"images", "labels"}
        images = decode(tiny.files[f"{prefix}-images-idx3-ubyte"], 3)
        labels = decode(tiny.files[f"{prefix}-labels-idx1-ubyte"], 1)
        assert tensors["images"].dtype == torch.float32 and tensors["images"].shape == (n, 784)
        assert tensors["labels"].dtype == torch.int64 and tensors["labels"].tolist() == labels.tolist()
        torch.testing.assert_close(tensors["images"], reference(images, 0.1307, 0.3081), rtol=0, atol=1e-6)
    info = json.loads((out / "dataset.json").read_text())
    assert info["dataset"] == "tiny"
    assert info["classes"] == list(synthetic.CLASSES)
    assert info["image_shape"] == [28, 28]
    assert (info["train_size"], info["test_size"]) == (300, 100)
    assert info["raw_sha256"] == {k: hashlib.sha256(v).hexdigest() for k, v in tiny.files.items()}
    assert info["normalize"] == {
        "mean": 0.1307,
        "std": 0.3081,
        "mean_from": "params",
        "std_from": "params",
    }


def test_auto_normalization_uses_the_train_split_only(tiny):
    params = tiny.params(**{"data.normalize.mean": "auto", "data.normalize.std": "auto"})
    write_raw(tiny, tiny.files)
    run_preprocess(tiny, params)
    info = json.loads((tiny.paths["prepared"] / "dataset.json").read_text())["normalize"]
    train_px = decode(tiny.files["train-images-idx3-ubyte"], 3).astype(np.float64) / 255.0
    assert info["mean_from"] == info["std_from"] == "auto"
    assert info["mean"] == pytest.approx(train_px.mean(), abs=1e-7)
    assert info["std"] == pytest.approx(train_px.std(), abs=1e-7)
    train = load_file(str(tiny.paths["prepared"] / "train.safetensors"))["images"]
    torch.testing.assert_close(
        train,
        reference(decode(tiny.files["train-images-idx3-ubyte"], 3), info["mean"], info["std"]),
        rtol=0,
        atol=1e-6,
    )

    # Same train split, a very different test split: the recorded mean/std must not move.
    altered = dict(tiny.files)
    te_x, _ = synthetic.make_split(100, 1)
    altered["t10k-images-idx3-ubyte"] = synthetic.idx_bytes(torch.full_like(te_x, 255))
    both = np.concatenate([train_px.ravel(), np.ones(te_x.numel())])
    assert both.mean() - train_px.mean() > 0.1  # stats over train+test would be far off
    write_raw(tiny, altered)
    run_preprocess(tiny, params)
    again = json.loads((tiny.paths["prepared"] / "dataset.json").read_text())["normalize"]
    assert (again["mean"], again["std"]) == (info["mean"], info["std"])


def test_auto_mean_with_fixed_std(tiny):
    params = tiny.params(**{"data.normalize.mean": "auto", "data.normalize.std": 0.5})
    write_raw(tiny, tiny.files)
    run_preprocess(tiny, params)
    info = json.loads((tiny.paths["prepared"] / "dataset.json").read_text())["normalize"]
    train_px = decode(tiny.files["train-images-idx3-ubyte"], 3).astype(np.float64) / 255.0
    assert info["mean"] == pytest.approx(train_px.mean(), abs=1e-7)
    assert (info["std"], info["mean_from"], info["std_from"]) == (0.5, "auto", "params")


@pytest.mark.parametrize(
    "victim, corrupt, problem",
    [
        ("train-images-idx3-ubyte", lambda d: d + b"\x00", "trailing bytes"),
        ("t10k-labels-idx1-ubyte", lambda d: d[:-3], "truncated"),
        ("train-labels-idx1-ubyte", lambda d: b"\x1f\x8b\x08\x00" + d[4:], "bad magic number"),
        ("t10k-images-idx3-ubyte", lambda d: b"<html>" + d, "bad magic number"),
    ],
)
def test_malformed_raw_file_is_an_idx_error_naming_it(tiny, victim, corrupt, problem):
    params = tiny.params()
    files = dict(tiny.files)
    files[victim] = corrupt(files[victim])
    write_raw(tiny, files)
    with pytest.raises(IdxError) as err:
        run_preprocess(tiny, params)
    assert str(tiny.paths["raw"] / victim) in str(err.value) and problem in str(err.value)
    assert not tiny.paths["prepared"].exists()
    assert staging_leftovers(tiny.paths["prepared"].parent) == []


def test_label_out_of_range_is_refused(tiny):
    params = tiny.params()
    files = dict(tiny.files)
    labels = bytearray(files["train-labels-idx1-ubyte"])
    labels[8 + 5] = 10  # a label the 10-class dataset does not have
    files["train-labels-idx1-ubyte"] = bytes(labels)
    write_raw(tiny, files)
    with pytest.raises(IdxError, match=r"label 10 outside 0\.\.9"):
        run_preprocess(tiny, params)


def test_preprocess_runs_without_torch(tiny):
    """The stage is numpy only: a fresh process running it never imports torch (its ~2 s import)."""
    params = tiny.params()
    write_raw(tiny, tiny.files)
    assert "torch" not in packages_imported_by(tiny, "preprocess", preprocess_argv(tiny, params))
    assert (tiny.paths["prepared"] / "train.safetensors").is_file()
