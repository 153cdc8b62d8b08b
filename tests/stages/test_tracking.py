"""MLflow tracking of train -> evaluate -> plot on a temp SQLite store, checked with MlflowClient."""

from __future__ import annotations

import json

import pytest

from mnist_softmax.core.params import flatten, load_params
from mnist_softmax.core.settings import ParamsError
from mnist_softmax.core.train import NonFiniteLoss
from tests.stages.helpers import run_evaluate, run_plot, run_train


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One SQLite store for this module (creating its tables takes ~4 s); each test uses its own experiment."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(prepared, monkeypatch, store_uri, request):
    """(MlflowClient on the temp store, a fresh experiment name); mlflow's process-wide URI is restored after."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # restored on teardown
    client = MlflowClient(store_uri)
    experiment = f"tiny-{request.node.name}"
    assert client.get_experiment_by_name(experiment) is None
    yield client, experiment
    while mlflow.active_run():
        mlflow.end_run()


EVALUATION_FILES = [
    "evaluation/confusion_matrix.json",
    "evaluation/eval.json",
    "evaluation/per_class_accuracy.json",
    "evaluation/predictions.csv",
]


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the experiment was not created"
    return client.search_runs([exp.experiment_id])


def artifact_paths(client, run_id, path=None):
    return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_tracked_chain_logs_one_finished_run(prepared, store):
    tiny, _ = prepared
    store, experiment = store
    params_path = tiny.params(name="tracked.yaml", **{"tracking.enabled": True, "tracking.experiment": experiment})
    params = load_params(params_path)
    epochs = params.train.epochs
    run_train(tiny, params_path)
    run_evaluate(tiny, params_path)
    run_plot(tiny, params_path)

    (run,) = runs_of(store, experiment)
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id

    logged = run.data.params
    for key, value in flatten(params).items():
        assert logged.get(key) == value, key

    history = json.loads(tiny.paths["history"].read_text())
    for metric in ("train_loss", "test_loss", "test_accuracy"):
        series = sorted(store.get_metric_history(run_id, metric), key=lambda m: m.step)
        assert [m.step for m in series] == list(range(1, epochs + 1)), metric
        assert [m.value for m in series] == pytest.approx([h[metric] for h in history], rel=1e-9), metric

    evaluation = json.loads(tiny.paths["metrics"].read_text())
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(evaluation["test_accuracy"], abs=1e-6)
    assert run.data.metrics["final_test_loss"] == pytest.approx(evaluation["test_loss"], abs=1e-6)

    top = artifact_paths(store, run_id)
    assert {"weights", "evaluation", "plots"} <= set(top)
    assert artifact_paths(store, run_id, "weights") == ["weights/model.pt"]
    assert artifact_paths(store, run_id, "evaluation") == EVALUATION_FILES
    assert artifact_paths(store, run_id, "plots") == [
        "plots/confusion_matrix.png",
        "plots/loss_accuracy.png",
        "plots/misclassified.png",
    ]


def test_each_stage_logs_its_own_results(prepared, store):
    """evaluate logs the final metrics and its files into the training's run; plot then adds the PNGs."""
    tiny, _ = prepared
    store, experiment = store
    params_path = tiny.params(name="split.yaml", **{"tracking.enabled": True, "tracking.experiment": experiment})
    run_train(tiny, params_path)
    (run,) = runs_of(store, experiment)
    assert "final_test_accuracy" not in run.data.metrics
    run_evaluate(tiny, params_path)
    (run,) = runs_of(store, experiment)
    evaluation = json.loads(tiny.paths["metrics"].read_text())
    assert run.data.metrics["final_test_accuracy"] == evaluation["test_accuracy"]
    assert artifact_paths(store, run.info.run_id, "evaluation") == EVALUATION_FILES
    assert artifact_paths(store, run.info.run_id, "plots") == []
    run_plot(tiny, params_path)
    assert len(artifact_paths(store, run.info.run_id, "plots")) == 3
    assert runs_of(store, experiment)[0].info.status == "FINISHED"


def test_failed_plot_still_leaves_the_final_metrics(prepared, store):
    """A drawing failure (here an unreadable history file) marks the run FAILED with the reason; what
    evaluate logged stays in it."""
    tiny, _ = prepared
    store, experiment = store
    params_path = tiny.params(name="badplot.yaml", **{"tracking.enabled": True, "tracking.experiment": experiment})
    run_train(tiny, params_path)
    run_evaluate(tiny, params_path)
    tiny.paths["history"].write_text("[{")  # truncated JSON
    with pytest.raises(json.JSONDecodeError):
        run_plot(tiny, params_path)
    (run,) = runs_of(store, experiment)
    assert run.info.status == "FAILED"
    assert "JSONDecodeError" in run.data.tags.get("pipeline.end_reason", "")
    evaluation = json.loads(tiny.paths["metrics"].read_text())
    assert run.data.metrics["final_test_accuracy"] == evaluation["test_accuracy"]
    assert artifact_paths(store, run.info.run_id, "evaluation") == EVALUATION_FILES
    assert artifact_paths(store, run.info.run_id, "plots") == []
    assert not tiny.paths["plots"].exists()


def test_diverged_training_leaves_its_run_failed(prepared, store):
    tiny, _ = prepared
    store, experiment = store
    params_path = tiny.params(
        name="diverge.yaml",
        **{"tracking.enabled": True, "tracking.experiment": experiment, "train.lr": 1.0e6},
    )
    with pytest.raises(NonFiniteLoss):
        run_train(tiny, params_path)
    (run,) = runs_of(store, experiment)
    assert run.info.status == "FAILED"
    assert "NonFiniteLoss" in run.data.tags.get("pipeline.end_reason", "")
    assert not tiny.paths["model"].exists() and not tiny.paths["history"].exists()


@pytest.mark.parametrize("text", ["alias", "bound"])
def test_hostile_params_stop_the_stage_before_any_mlflow_run(prepared, store, text):
    tiny, _ = prepared
    store, experiment = store
    path = tiny.params(name="hostile.yaml", **{"tracking.enabled": True, "tracking.experiment": experiment})
    body = path.read_text()
    if text == "alias":
        path.write_text("x: &x 5\n" + body.replace("epochs: 3", "epochs: *x"))
    else:
        path.write_text(body.replace("batch_size: 32", "batch_size: 1000000000"))
    with pytest.raises(ParamsError):
        run_train(tiny, path)
    assert store.get_experiment_by_name(experiment) is None
    assert not tiny.paths["model"].exists()
