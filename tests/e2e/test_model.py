"""Issue #3.6: the MLflow model train logs (tracking.log_model) loads as pyfunc and predicts what the pipeline
predicted, in-process and through `mlflow models predict`."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import harness as P

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def logged(repro_project):
    """(run, model URI, test images as the model takes them, the pipeline's predicted class indices)."""
    root = repro_project.root
    digest = hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()
    [run] = [r for r in P.runs(root) if r.data.tags.get("model_sha256") == digest]
    images = load_file(str(root / "data" / "prepared" / "test.safetensors"))["images"]  # normalized N x 784
    classes = json.loads((root / "data" / "prepared" / "dataset.json").read_text())["classes"]
    with open(root / "metrics" / "predictions.csv", newline="") as f:
        predicted = np.array([classes.index(row["predicted"]) for row in csv.DictReader(f)])
    return run, run.data.tags["mlflow_model_uri"], images, predicted


def test_logged_model_is_findable_from_the_run(repro_project, logged):
    run, uri, _, _ = logged
    client = P.mlflow_client(repro_project.root)
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [f"models:/{m.model_id}" for m in models] == [uri]
    model = models[0]
    assert model.name == "model" and str(model.status).endswith("READY")
    assert model.artifact_location.startswith((repro_project.root / "mlruns").as_uri())


def test_pyfunc_predictions_match_the_pipeline(repro_project, logged, monkeypatch):
    import mlflow.pyfunc
    _, uri, images, predicted = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repro_project.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 784)
    logits = model.predict(images)
    assert logits.shape == (len(predicted), 10)
    np.testing.assert_array_equal(logits.argmax(axis=1), predicted)


def test_mlflow_models_predict_cli(repro_project, logged, tmp_path):
    _, uri, images, predicted = logged
    batch = 16
    (tmp_path / "input.json").write_text(json.dumps({"inputs": images[:batch].tolist()}))
    env_uri = f"sqlite:///{repro_project.root / 'mlflow.db'}"
    done = P.run(["env", f"MLFLOW_TRACKING_URI={env_uri}", str(P.BIN / "mlflow"), "models", "predict",
                  "-m", uri, "-i", str(tmp_path / "input.json"), "-t", "json", "-o", str(tmp_path / "out.json"),
                  "--env-manager", "local"], tmp_path, timeout=180)
    out = json.loads((tmp_path / "out.json").read_text())
    logits = np.array(out["predictions"])
    assert logits.shape == (batch, 10), done.stdout
    np.testing.assert_array_equal(logits.argmax(axis=1), predicted[:batch])
