"""Complete runs whatever DVC decides to run.

A forced training (`dvc repro -f train`) that makes the same model bytes as an earlier run gets a new run,
but DVC then skips evaluate and plot: their deps (the model file among them) are unchanged. So that every
FINISHED training run holds what a complete run holds, the training copies into its run what the newest
earlier run of the same model bytes has and it lacks (metrics and artifacts), and tags
`pipeline.copied.<stage>` with that run's id for each stage whose results came from there. When a stage
then does run on this run, it replaces what was copied and removes its tag.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_softmax.tracking.lifecycle import COPIED_TAG, stage_outcomes
from mnist_softmax.tracking.run import MODEL_HASH_TAG, RunHandle

NOT_COPIED = ("dvc_exp_reused",)  # what the earlier run holds for other experiments that reused it


def copy_earlier_results(client: MlflowClient, experiment_id: str, run_id: str, model_sha256: str) -> str | None:
    """Copy from the newest earlier FINISHED run of the same model what this run lacks; its id, or None."""
    where = f"tags.{MODEL_HASH_TAG} = '{model_sha256}' and attributes.status = 'FINISHED'"
    earlier = [
        r
        for r in client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], max_results=20)
        if r.info.run_id != run_id
    ]
    if not earlier:
        return None
    source, mine = earlier[0], client.get_run(run_id)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in source.data.metrics.items() if k not in mine.data.metrics]
    finished = [s for s, outcome in stage_outcomes(source.data.tags).items() if outcome == "FINISHED"]
    tags = {COPIED_TAG + stage: source.info.run_id for stage in finished if stage != "train"}
    have = {a.path for a in client.list_artifacts(run_id)}
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in client.list_artifacts(source.info.run_id):
            if artifact.path in have or artifact.path.startswith(NOT_COPIED):
                continue
            local = Path(client.download_artifacts(source.info.run_id, artifact.path, tmp))
            if artifact.is_dir:
                client.log_artifacts(run_id, str(local), artifact.path)
            else:
                client.log_artifact(run_id, str(local))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    RunHandle(client, run_id).set_tags(tags)
    return source.info.run_id
