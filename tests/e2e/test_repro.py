"""`dvc repro` end to end on the tiny dataset: outputs, metrics, no-op re-run, which params re-run
which stages, the DAG, and what the MLflow run records."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import pytest

from tests import harness as P

pytestmark = pytest.mark.e2e


def _png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def _flatten_yaml(node, prefix="") -> dict[str, str]:
    """params.yaml flattened as MLflow should hold it, written independently of mnist_softmax.core.params.flatten."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten_yaml(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def _model_run(root):
    """The MLflow run that produced the workspace's models/model.pt (by its SHA-256 tag)."""
    digest = hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()
    found = [r for r in P.runs(root) if r.data.tags.get("model_sha256") == digest]
    assert len(found) == 1, f"{len(found)} runs carry model_sha256 {digest}"
    return found[0]


def test_a_repro_shows_the_stages_own_lines_and_no_library_noise(repro_project):
    """A fresh store, a logged MLflow model: no INFO lines, warnings or progress bars from the libraries."""
    out = repro_project.first_repro
    for noise in (" INFO ", "Warning:", "Downloading artifacts", "Traceback"):
        assert noise not in out, out
    assert "evaluate: test accuracy" in out and "plot: wrote" in out


def test_first_repro_runs_five_stages_and_writes_every_output(repro_project):
    root = repro_project.root
    assert P.ran_stages(repro_project.first_repro) == P.STAGES
    raw = sorted(p.name for p in (root / "data" / "raw").iterdir())
    assert raw == sorted(
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
    )
    assert sorted(p.name for p in (root / "data" / "prepared").iterdir()) == [
        "dataset.json",
        "test.safetensors",
        "train.safetensors",
    ]
    for rel in (
        "models/model.pt",
        "metrics/train_history.json",
        "metrics/eval.json",
        "metrics/confusion_matrix.json",
        "metrics/predictions.csv",
    ):
        assert (root / rel).stat().st_size > 0, rel
    assert sorted(p.name for p in (root / "plots").iterdir()) == [
        "confusion_matrix.png",
        "loss_accuracy.png",
        "misclassified.png",
    ]
    history = json.loads((root / "metrics" / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len((root / "metrics" / "predictions.csv").read_text().splitlines()) == 1 + 100  # header + test set


def test_metrics_show_lists_test_accuracy(repro_project):
    shown = P.dvc_json(repro_project.root, "metrics", "show")
    metrics = next(iter(shown.values()))["data"]["metrics/eval.json"]["data"]
    on_disk = json.loads((repro_project.root / "metrics" / "eval.json").read_text())
    assert metrics["test_accuracy"] == on_disk["test_accuracy"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] >= 0.0


def test_second_repro_is_a_no_op(repro_project):
    root = repro_project.root
    lock = (root / "dvc.lock").read_bytes()
    out = P.dvc(root, "repro").stdout
    assert P.ran_stages(out) == []
    for stage in P.STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Data and pipelines are up to date." in out
    assert (root / "dvc.lock").read_bytes() == lock
    assert P.dvc_json(root, "status") == {}


def test_dag_lists_the_five_stages_in_order(repro_project):
    text = P.dvc(repro_project.root, "dag").stdout
    positions = [text.index(f"| {stage} |") for stage in P.STAGES]
    assert positions == sorted(positions), text
    dot = P.dvc(repro_project.root, "dag", "--dot").stdout
    for edge in (
        'download" -> "preprocess',
        'preprocess" -> "train',
        'train" -> "evaluate',
        'evaluate" -> "plot',
        'train" -> "plot',
    ):
        assert f'"{edge}"' in dot, dot


def test_changing_plot_dpi_reruns_only_plot(repro_project):
    root = repro_project.root
    width = _png_width(root / "plots" / "loss_accuracy.png")
    runs_before = len(P.runs(root))
    try:
        P.set_params(root, **{"plot.dpi": 2 * P.read_params(root)["plot"]["dpi"]})
        assert set(P.dvc_json(root, "status")) == {"plot"}
        out = P.dvc(root, "repro").stdout
        assert P.ran_stages(out) == ["plot"], out
        assert _png_width(root / "plots" / "loss_accuracy.png") == 2 * width
        assert len(P.runs(root)) == runs_before  # plot attaches to the existing run; it opens none
    finally:
        P.restore_baseline(root)


def test_changing_lr_reruns_train_evaluate_plot_not_the_data_stages(repro_project):
    root = repro_project.root
    runs_before = {r.info.run_id for r in P.runs(root)}
    try:
        P.set_params(root, **{"train.lr": 0.05})
        assert set(P.dvc_json(root, "status")) == {"train"}  # the others change only once train has run
        out = P.dvc(root, "repro").stdout
        assert P.ran_stages(out) == P.STAGES[P.STAGES.index("train") :], out
        for stage in P.STAGES[: P.STAGES.index("train")]:
            assert f"Stage '{stage}' didn't change, skipping" in out
        new = [r for r in P.runs(root) if r.info.run_id not in runs_before]
        assert len(new) == 1 and new[0].data.params["train.lr"] == "0.05"
        run = _model_run(root)  # plot logged evaluate's results and the PNGs into the new training's run
        assert run.info.run_id == new[0].info.run_id
        assert "final_test_accuracy" in run.data.metrics
        artifacts = {a.path for a in P.mlflow_client(root).list_artifacts(run.info.run_id, "plots")}
        assert "plots/loss_accuracy.png" in artifacts
    finally:
        P.restore_baseline(root)


def test_mlflow_run_records_params_per_epoch_metrics_final_metrics_and_artifacts(repro_project):
    root = repro_project.root
    run = _model_run(root)
    client = P.mlflow_client(root)
    assert run.info.status == "FINISHED"

    expected = _flatten_yaml(P.read_params(root))
    assert {k: run.data.params.get(k) for k in expected} == expected
    assert set(run.data.params) - set(expected) == {
        "data.normalize.mean_used",
        "data.normalize.std_used",
        "train.device_used",
    }

    history = json.loads((root / "metrics" / "train_history.json").read_text())
    for key in ("train_loss", "test_loss", "test_accuracy"):
        steps = P.metric_steps(root, run.info.run_id, key)
        assert [s for s, _ in steps] == [1, 2, 3], key
        assert [v for _, v in steps] == pytest.approx([h[key] for h in history]), key

    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(evaluation["test_accuracy"], abs=1e-6)
    assert run.data.metrics["final_test_loss"] == pytest.approx(evaluation["test_loss"], abs=1e-6)
    # the UI charts metrics by name, `system/` ones last: only the two final numbers come before the curves
    assert set(run.data.metrics) == {
        "train_loss",
        "test_loss",
        "test_accuracy",
        "system/epoch_seconds",
        "final_test_accuracy",
        "final_test_loss",
    }

    tags = run.data.tags
    assert tags["dataset"] == "tiny" and tags["dvc_stage"] == "train"
    assert tags["mlflow.source.git.commit"] == P.git(root, "rev-parse", "HEAD~1").strip()  # trained before
    # the "baseline results" commit
    assert tags["mlflow_model_uri"].startswith("models:/")
    assert run.info.run_name == "workspace@" + tags["mlflow.source.git.commit"][:7]  # what made it

    listed = {
        a.path for folder in ("weights", "evaluation", "plots") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert listed == {
        "weights/model.pt",
        "evaluation/eval.json",
        "evaluation/per_class_accuracy.json",
        "evaluation/confusion_matrix.json",
        "evaluation/predictions.csv",
        "plots/confusion_matrix.png",
        "plots/loss_accuracy.png",
        "plots/misclassified.png",
    }
    assert run.info.artifact_uri.startswith((root / "mlruns").as_uri())
    logged_weights = root / "mlruns" / run.info.artifact_uri.split("/mlruns/", 1)[1] / "weights" / "model.pt"
    assert logged_weights.read_bytes() == (root / "models" / "model.pt").read_bytes()
    datasets = run.inputs.dataset_inputs
    assert len(datasets) == 1 and datasets[0].dataset.name == "tiny"


def test_a_forced_training_of_the_same_bytes_still_holds_the_evaluation_and_plots(template, e2e_dir):
    """`dvc repro -f train` trains the same bytes in a new run and DVC runs nothing after it (evaluate's and
    plot's deps are unchanged): the new run gets their results from the run that made those bytes, tagged
    with where they came from; a stage that then runs on it replaces them and drops its tag."""
    root = P.clone_project(template, e2e_dir / "forced-train", fresh_store=False)
    [original] = P.runs(root)
    out = P.dvc(root, "repro", "-f", "train").stdout
    assert P.ran_stages(out)[-1] == "train", out  # and the stages before it, none after it
    assert f"run {original.info.run_id} made the same model bytes" in out, out
    client = P.mlflow_client(root)
    [new] = [r for r in P.runs(root) if r.info.run_id != original.info.run_id]
    assert new.info.status == "FINISHED"
    assert new.data.tags["model_sha256"] == original.data.tags["model_sha256"]
    for stage in P.STAGES[P.STAGES.index("train") + 1 :]:
        assert new.data.tags[f"pipeline.copied.{stage}"] == original.info.run_id
    assert {k: v for k, v in new.data.metrics.items() if k.startswith("final_")} == {
        k: v for k, v in original.data.metrics.items() if k.startswith("final_")
    }
    listed = {a.path for folder in ("evaluation", "plots") for a in client.list_artifacts(new.info.run_id, folder)}
    assert listed == {a.path for f in ("evaluation", "plots") for a in client.list_artifacts(original.info.run_id, f)}
    assert listed and not [a for a in client.list_artifacts(new.info.run_id) if a.path.startswith("dvc_exp_reused")]

    out = P.dvc(root, "repro", "-f", "-s", "evaluate").stdout  # evaluate now runs on the new run
    assert P.ran_stages(out) == ["evaluate"], out
    tags = client.get_run(new.info.run_id).data.tags
    assert "pipeline.copied.evaluate" not in tags and tags["pipeline.copied.plot"] == original.info.run_id
    assert tags["pipeline.stage.evaluate"] == "FINISHED"


def test_the_pull_request_report_shows_the_changes_and_plots_offline(template, e2e_dir):
    """`make report`: params and metrics that differ from the baseline and the PNGs of both, in one Markdown
    file whose images are files beside it."""
    root = P.clone_project(template, e2e_dir / "report")
    P.set_params(root, **{"train.lr": 0.05})
    P.dvc(root, "repro")
    out = P.run(["python", "-m", "mnist_softmax.team.report", "--baseline", "HEAD"], root, env_=P.env(PYTHONPATH="src"))
    assert "report: wrote report/report.md" in out.stdout, out.stdout
    text = (root / "report" / "report.md").read_text()
    assert "| `train.lr` | `0.1` | `0.05` |" in text, text
    for metric in ("test_accuracy", "test_loss"):
        assert f"| `{metric}` (metrics/eval.json) |" in text, text
    images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    assert {alt for alt, _ in images} >= {"plots/loss_accuracy.png (HEAD)", "plots/loss_accuracy.png (workspace)"}
    assert all((root / "report" / path).is_file() for _, path in images), images
