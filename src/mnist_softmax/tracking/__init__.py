"""Run tracking: the one interface the stages use, with MLflow behind it.

    tracker = open_tracker(enabled, experiment, run_file)
    with tracker.training_run(name, params, tags) as run:      # train: a new run for one training
        run.log_metrics({...}, step=epoch)
    with tracker.attached_run(model_sha256, "evaluate") as run: # evaluate, plot: the run that made the model
        run.log_artifact(path, "evaluation")

With tracking off the same calls go to NullTracker / NullRun and mlflow is never imported. Only the modules
of this package import mlflow; docs/architecture.md draws the run lifecycle they implement (lifecycle.py).
"""

from __future__ import annotations

from pathlib import Path

from mnist_softmax.tracking.interface import NullRun, NullTracker, Run, Tracker

__all__ = ["NullRun", "NullTracker", "Run", "Tracker", "open_tracker"]


def open_tracker(enabled: bool, experiment: str, run_file: str | Path | None = None) -> Tracker:
    """The MLflow tracker (raises TrackingError if its store is unusable, before any work), or a NullTracker."""
    if not enabled:
        return NullTracker()
    from mnist_softmax.tracking.tracker import MlflowTracker  # imports mlflow: only when tracking is on

    return MlflowTracker(experiment, run_file=run_file)
