"""Scaling and normalization (numpy) against torchvision's ToTensor + Normalize, bit for bit; dataset stats
against torch's float64 reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from mnist_softmax.core.preprocess import dataset_stats, normalize, to_unit

MEAN, STD = 0.1307, 0.3081


def reference(images_uint8: torch.Tensor, mean: float, std: float, via: str) -> torch.Tensor:
    """torchvision's transform, one image at a time, flattened like the pipeline's rows."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    rows = []
    for img in images_uint8:
        source = Image.fromarray(img.numpy(), mode="L") if via == "pil" else img.numpy()[:, :, None]
        rows.append(tf(source).reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("via", ["pil", "numpy"])
def test_to_unit_then_normalize_matches_torchvision(tiny_split, via):
    images = tiny_split[0][:40]
    ours = normalize(to_unit(images.numpy()), MEAN, STD)
    expected = reference(images, MEAN, STD, via)
    assert ours.dtype == np.float32 and ours.shape == (40, 784)
    assert np.array_equal(ours, expected.numpy())  # the same float32 operations, in the same order


def test_full_range_of_pixel_values_matches_torchvision():
    images = torch.arange(256, dtype=torch.uint8).repeat(4)[: 28 * 28].reshape(1, 28, 28).repeat(3, 1, 1)
    assert np.array_equal(normalize(to_unit(images.numpy()), 0.5, 0.25), reference(images, 0.5, 0.25, "pil").numpy())


def test_to_unit_range_and_shape():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = to_unit(images)
    assert x.dtype == np.float32
    assert x.shape == (1, 4)
    assert x[0].tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4], abs=1e-7)


def test_to_unit_does_not_modify_its_input():
    images = np.full((2, 3, 3), 200, dtype=np.uint8)
    before = images.copy()
    to_unit(images)
    assert np.array_equal(images, before)


def test_normalize_does_not_modify_its_input():
    x = np.full((2, 4), 0.5, dtype=np.float32)
    normalize(x, 0.1, 0.2)
    assert (x == 0.5).all()


def test_dataset_stats_matches_torch_float64(tiny_split):
    images = tiny_split[0]
    mean, std = dataset_stats(to_unit(images.numpy()))
    pixels = images.to(torch.float64).reshape(-1) / 255.0
    # float32 -> float64 of the scaled values differs from exact /255 in float64 by < 1e-7 per pixel
    assert mean == pytest.approx(float(pixels.mean()), abs=1e-7)
    assert std == pytest.approx(float(pixels.std(correction=0)), abs=1e-7)
    assert isinstance(mean, float) and isinstance(std, float)


def test_dataset_stats_is_the_population_std():
    x = np.array([[0.0, 1.0]], dtype=np.float32)
    assert dataset_stats(x) == (0.5, 0.5)  # sample std (correction=1) would be 0.7071...


def test_normalized_train_data_has_zero_mean_unit_std(tiny_split):
    x = to_unit(tiny_split[0].numpy())
    mean, std = dataset_stats(x)
    z = normalize(x, mean, std).astype(np.float64)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-5)
