"""Shared helpers of the unit tests: tiny tensors and IDX bytes built independently of the package."""

from __future__ import annotations

import pytest
import torch

from tests.synthetic import make_split


@pytest.fixture
def tiny_split():
    """300 train / 100 test synthetic images (uint8 N×28×28) and labels (int64), as in tests/synthetic.py."""
    tr_x, tr_y = make_split(300, 0)
    te_x, te_y = make_split(100, 1)
    return tr_x, tr_y.long(), te_x, te_y.long()


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Tests may change torch's thread count or determinism flag; put them back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
