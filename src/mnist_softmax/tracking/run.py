"""RunHandle: what a stage logs into one MLflow run, by id (the tracking interface's Run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mnist_softmax.fileio import explained_disk_full
from mnist_softmax.tracking.store import server_lost

MODEL_HASH_TAG = "model_sha256"  # the model file a run produced: evaluate and plot look runs up by it
MODEL_URI_TAG = "mlflow_model_uri"  # models:/<model_id> of the logged MLflow model
DIGEST_CHARS = 32  # MLflow refuses dataset digests over 36 characters
BATCH = 100  # MLflow's log_batch takes at most 100 params per call
TAG_CHARS = 5000  # MLflow's longest tag value


class RunHandle:
    """Logs into one run by id; `artifact_prefix` is set on a run attached for another DVC experiment."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_prefix: str | None = None):
        self.client, self.run_id, self.artifact_prefix = client, run_id, artifact_prefix
        self.model_sha256: str | None = None

    def _log_batch(self, **entities: Any) -> None:
        with server_lost(self.client.tracking_uri):
            self.client.log_batch(self.run_id, **entities)

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self._log_batch(params=items[i : i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        self._log_batch(tags=[RunTag(k, str(v)[:TAG_CHARS]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._log_batch(metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.artifact_prefix:
            artifact_path = "/".join(filter(None, [self.artifact_prefix, artifact_path]))
        with (
            explained_disk_full(f"the run's artifact {artifact_path}/{Path(path).name}"),
            server_lost(self.client.tracking_uri),
        ):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, digest: str, path: str, context: str) -> None:
        """Dataset lineage (the run's Inputs). MLflow caps a digest at 36 characters: callers pass a prefix
        of the full hash, which the run's tags hold."""
        # LocalArtifactDatasetSource is made at import time by mlflow (artifact_dataset_sources.py), unseen by mypy;
        # MetaDataset leaves Dataset.profile abstract, but Dataset is no ABC, so it instantiates.
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

        dataset = MetaDataset(LocalArtifactDatasetSource(path), name=name, digest=digest[:DIGEST_CHARS])  # type: ignore[abstract]
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        with server_lost(self.client.tracking_uri):
            self.client.log_inputs(self.run_id, [entity])

    def log_model(self, model: Any, arch: dict, preprocessing: dict, input_example: Any) -> None:
        """The run's MLflow model (logged_model.py); its URI goes into the tag mlflow_model_uri."""
        from mnist_softmax.tracking.logged_model import log_model

        with server_lost(self.client.tracking_uri):
            uri = log_model(model, arch, preprocessing, input_example)
        self.set_tags({MODEL_URI_TAG: uri})

    def set_model_hash(self, model_sha256: str) -> None:
        """Mark the run as the producer of this model file; evaluate and plot look runs up by it."""
        self.set_tags({MODEL_HASH_TAG: model_sha256})
        self.model_sha256 = model_sha256
