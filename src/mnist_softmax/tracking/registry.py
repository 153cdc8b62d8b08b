"""The model registry: register a run's logged model and point an alias at the new version."""

from __future__ import annotations

import contextlib

from mlflow.exceptions import MlflowException

from mnist_softmax.tracking.context import project_root, store_uri, without_secrets
from mnist_softmax.tracking.run import MODEL_URI_TAG
from mnist_softmax.tracking.store import TrackingError, project_client


def promote(experiment: str, dvc_exp_name: str, model_name: str, alias: str) -> tuple[str, str]:
    """Register the MLflow model of the newest FINISHED run of DVC experiment `dvc_exp_name` (its run name) as
    a new version of `model_name`, and point `alias` at it. (version, run id)."""
    client = project_client()
    exp = client.get_experiment_by_name(experiment)
    where = f"attributes.run_name = '{dvc_exp_name}' and attributes.status = 'FINISHED'"
    runs = (
        []
        if exp is None
        else client.search_runs([exp.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    )
    if not runs or MODEL_URI_TAG not in runs[0].data.tags:
        raise TrackingError(
            f"no FINISHED run of {dvc_exp_name!r} with a logged model in experiment"
            f" {experiment!r} of {without_secrets(store_uri(project_root()))}"
        )
    run = runs[0]
    with contextlib.suppress(MlflowException):  # it exists already: nothing to say
        client.create_registered_model(model_name)
    model_uri = run.data.tags[MODEL_URI_TAG]  # models:/<model_id>
    version = client.create_model_version(
        model_name, model_uri, run_id=run.info.run_id, model_id=model_uri.removeprefix("models:/")
    ).version
    client.set_registered_model_alias(model_name, alias, version)
    return str(version), run.info.run_id
