"""src/mkl.py: strict CNR is asked for unless the environment already chose an MKL_CBWR."""
from __future__ import annotations

import os

from src.mkl import use_strict_cnr


def test_strict_cnr_is_set_when_the_environment_has_none(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    use_strict_cnr()
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"


def test_a_chosen_mkl_cbwr_is_kept(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    use_strict_cnr()
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"
