"""Stage tests: each stage's main() run in-process on the tiny synthetic dataset (tests/synthetic.py)."""

from __future__ import annotations

import pytest
import torch

from tests import synthetic
from tests.stages.helpers import Tiny, run_download, run_preprocess


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Register the tiny dataset for one test, unregister it afterwards; restore torch's global settings."""
    files = synthetic.raw_files()
    spec = synthetic.register_tiny(files)
    source_dir = synthetic.write_files(tmp_path / "source", files)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything a stage writes relative to the cwd lands in the temp folder
    paths = {
        "raw": work / "data" / "raw",
        "prepared": work / "data" / "prepared",
        "model": work / "models" / "model.pt",
        "history": work / "metrics" / "train_history.json",
        "metrics": work / "metrics" / "eval.json",
        "per_class": work / "metrics" / "per_class_accuracy.json",
        "confusion": work / "metrics" / "confusion_matrix.json",
        "predictions": work / "metrics" / "predictions.csv",
        "plots": work / "plots",
        "checkpoint": work / "models" / "checkpoint.pt",
        "run_file": work / ".mlflow-run.json",
    }
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield Tiny(root=tmp_path, files=files, spec=spec, source_dir=source_dir, paths=paths)
    finally:
        synthetic.unregister()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def prepared(tiny):
    """The tiny dataset downloaded (from its dir: source) and preprocessed; returns (tiny, params path)."""
    params = tiny.params()
    run_download(tiny, params)
    run_preprocess(tiny, params)
    return tiny, params
