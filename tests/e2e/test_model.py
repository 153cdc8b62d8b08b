"""The MLflow model train logs (tracking.log_model) loads as pyfunc, takes pixels as the IDX files hold them,
refuses anything else saying what it expects, and predicts what the pipeline predicted, in-process and
through `mlflow models predict`, without unpickling anything."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mnist_softmax.core.preprocess import to_pixels
from tests import harness as P

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def logged(repro_project):
    """(run, model URI, test images' pixels as the IDX files hold them, the pipeline's predicted classes)."""
    root = repro_project.root
    digest = hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()
    [run] = [r for r in P.runs(root) if r.data.tags.get("model_sha256") == digest]
    info = json.loads((root / "data" / "prepared" / "dataset.json").read_text())
    normalized = load_file(str(root / "data" / "prepared" / "test.safetensors"))["images"]  # N x 784
    images = to_pixels(normalized, info["normalize"]["mean"], info["normalize"]["std"])
    classes = info["classes"]
    with open(root / "metrics" / "predictions.csv", newline="") as f:
        predicted = np.array([classes.index(row["predicted"]) for row in csv.DictReader(f)])
    return run, run.data.tags["mlflow_model_uri"], images, predicted


def test_logged_model_is_findable_from_the_run(repro_project, logged):
    run, uri, _, _ = logged
    client = P.mlflow_client(repro_project.root)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [f"models:/{m.model_id}" for m in models] == [uri]
    model = models[0]
    assert model.name == "model" and str(model.status).endswith("READY")
    assert model.artifact_location.startswith((repro_project.root / "mlruns").as_uri())


def test_pyfunc_predictions_match_the_pipeline(repro_project, logged, monkeypatch):
    import mlflow.pyfunc

    _, uri, images, predicted = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repro_project.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(images)
    probs = [f"prob_{k}" for k in range(10)]
    assert list(out.columns) == ["label", *probs]
    np.testing.assert_array_equal(out["label"].to_numpy(), predicted)
    np.testing.assert_allclose(out[probs].to_numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(images.reshape(-1, 28, 28))["label"].to_numpy(), predicted)


@pytest.mark.parametrize(
    "bad, says",
    [
        (lambda x: x / 255 - 0.5, "got values -0.5"),  # normalized rows: the model normalizes itself
        (lambda x: x * 2, "got values 0.0..510.0"),
        (lambda x: x[:, :100], "got shape (16, 100)"),
        (lambda x: x.reshape(16, 4, 196), "got shape (16, 4, 196)"),
        (lambda x: np.where(x > 0, np.nan, x), "got values"),
    ],
)
def test_the_model_refuses_what_is_not_pixels_saying_what_it_expects(repro_project, logged, monkeypatch, bad, says):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    _, uri, images, _ = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repro_project.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(uri)
    with pytest.raises(MlflowException) as refused:
        model.predict(bad(images[:16]))
    message = str(refused.value)
    assert "expected pixels 0-255" in message and "(n, 784) or (n, 28, 28)" in message and says in message


def test_mlflow_models_predict_cli(repro_project, logged, tmp_path):
    _, uri, images, predicted = logged
    batch = 16
    (tmp_path / "input.json").write_text(json.dumps({"inputs": images[:batch].tolist()}))
    env_uri = f"sqlite:///{repro_project.root / 'mlflow.db'}"
    done = P.run(
        [
            "env",
            f"MLFLOW_TRACKING_URI={env_uri}",
            str(P.BIN / "mlflow"),
            "models",
            "predict",
            "-m",
            uri,
            "-i",
            str(tmp_path / "input.json"),
            "-t",
            "json",
            "-o",
            str(tmp_path / "out.json"),
            "--env-manager",
            "local",
        ],
        tmp_path,
        timeout=180,
    )
    out = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(out) == batch, done.stdout
    assert [row["label"] for row in out] == predicted[:batch].tolist()


LOAD_WATCHING_UNPICKLING = """
import json, sys
import numpy as np
found = []
sys.addaudithook(lambda event, args: found.append(args[:2]) if event == "pickle.find_class" else None)
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
labels = model.predict(np.load(sys.argv[2]))["label"].tolist()
loading = [list(map(str, f)) for f in found]
import collections, pickle
pickle.loads(pickle.dumps(collections.OrderedDict()))  # the control: the hook does see unpickling
print(json.dumps({"classes_unpickled": loading, "control": len(found) > len(loading),
                  "predicted": labels}))
"""


def test_the_model_is_code_and_safetensors_and_loading_unpickles_nothing(repro_project, logged, tmp_path):
    """Logged as MLflow's models-from-code with the weights in safetensors: no pickle in its files, and a
    fresh process that loads and runs it sees no unpickling of any object (Python's audit hook)."""
    _run, uri, images, predicted = logged
    client = P.mlflow_client(repro_project.root)
    model = client.get_logged_model(uri.removeprefix("models:/"))
    folder = Path(model.artifact_location.removeprefix("file://"))
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "MLmodel",
        "artifacts/model.safetensors",
        "artifacts/architecture.json",
        "artifacts/preprocessing.json",
        "served_model.py",
    } <= names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pt", ".pth"))]
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (folder / "MLmodel").read_text()
    np.save(tmp_path / "batch.npy", images[:32])
    done = P.run(
        [P.BIN / "python", "-c", LOAD_WATCHING_UNPICKLING, uri, tmp_path / "batch.npy"],
        tmp_path,
        env_=P.env(MLFLOW_TRACKING_URI=P.store_uri(repro_project.root)),
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["classes_unpickled"] == [] and result["control"]
    assert result["predicted"] == predicted[:32].tolist()


def test_a_logged_model_whose_architecture_was_tampered_with_is_refused_before_it_is_built(
    repro_project, logged, tmp_path, monkeypatch
):
    import mlflow.artifacts
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repro_project.root / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts(logged[1], dst_path=str(tmp_path)))
    [arch_file] = local.rglob("architecture.json")
    arch = json.loads(arch_file.read_text())
    arch_file.write_text(json.dumps({**arch, "hidden_sizes": [50_000, 4096]}))
    with pytest.raises(Exception, match=r"architecture is invalid:\n  - hidden_sizes.0 = 50000"):
        mlflow.pyfunc.load_model(str(local))
