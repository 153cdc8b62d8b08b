"""Experiment tracking behind one small interface; MLflow itself lives in mlflow_tracker.py.

`open_tracker(enabled, experiment)` returns the MLflow Tracker, or a NullTracker of the same interface when
tracking is off (then mlflow is never imported). The train stage opens a run; evaluate and plot attach to
the run that produced the model they consumed, found by the model file's SHA-256 (a run id never goes into a
DVC-tracked output), and log their own results there.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def project_root() -> Path:
    """The real project root: DVC sets DVC_ROOT there even when a queued run works in a temp copy."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def store_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store `mlflow ui` opens in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def run_context_tags() -> dict[str, str]:
    """Git commit and the DVC experiment this stage runs under (when there is one)."""
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.getcwd()).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    if commit:
        tags["mlflow.source.git.commit"] = tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
                     ("DVC_STAGE", "dvc_stage")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


class NullRun:
    """Same interface as mlflow_tracker.RunHandle; records nothing."""
    run_id = None

    def log_params(self, params): pass
    def set_tags(self, tags): pass
    def log_metrics(self, metrics, step=0): pass
    def log_artifact(self, path, artifact_path=None): pass
    def log_dataset(self, name, digest, path, context): pass
    def log_pytorch_model(self, model, input_example, name="model"): pass
    def set_model_hash(self, model_sha256): pass
    def end(self, status, reason=None): pass


class NullTracker:
    """Tracking off (`tracking.enabled: false`): every call is a no-op."""

    def end_orphaned_runs(self):
        return []

    @contextlib.contextmanager
    def training_run(self, run_name, params, tags):
        yield NullRun()

    def find_model_run(self, model_sha256):
        return None

    @contextlib.contextmanager
    def attached_run(self, model_sha256, log=print):
        yield NullRun()


def open_tracker(enabled: bool, experiment: str):
    """The MLflow Tracker (raises TrackingError if its store is unusable), or a NullTracker."""
    if not enabled:
        return NullTracker()
    from mnist_softmax.mlflow_tracker import Tracker  # importing mlflow costs ~2.5 s
    return Tracker(experiment)
