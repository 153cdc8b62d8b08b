"""Stages train -> evaluate -> plot, chained in-process on the tiny dataset with tracking off."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from PIL import Image

from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.model import load_model
from mnist_softmax.core.params import load_params
from mnist_softmax.core.prepared import load_split
from tests.stages.helpers import (
    packages_imported_by,
    plot_argv,
    run_evaluate,
    run_plot,
    run_train,
    staging_leftovers,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["confusion_matrix.png", "loss_accuracy.png", "misclassified.png"]


@pytest.fixture
def trained(prepared):
    tiny, params = prepared
    run_train(tiny, params)
    return tiny, params


def test_chain_outputs(trained):
    tiny, params = trained
    epochs = load_params(params).train.epochs
    p = tiny.paths

    # train: a weights-only model file and a per-epoch history without timings
    saved = torch.load(p["model"], map_location="cpu", weights_only=True)
    assert set(saved) == {"arch", "state_dict"}
    assert saved["arch"]["hidden_sizes"] == [32, 16] and saved["arch"]["in_features"] == 784
    history = json.loads(p["history"].read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert all(set(h) == {"epoch", "train_loss", "test_loss", "test_accuracy"} for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    # evaluate: metrics, confusion matrix and predictions agree with the model itself
    run_evaluate(tiny, params)
    metrics = json.loads(p["metrics"].read_text())
    assert set(metrics) == {"test_accuracy", "test_loss"}  # the headline: what `dvc exp show` lists
    per_class = json.loads(p["per_class"].read_text())
    assert [row["class"] for row in per_class] == [str(k) for k in range(10)]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in per_class)
    with open(p["predictions"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"]
    images, labels = (torch.from_numpy(a) for a in load_split(p["prepared"] / "test.safetensors"))
    assert len(rows) - 1 == labels.numel() == 100
    model, _ = load_model(p["model"])
    result = predict(model, images, labels, batch_size=100)
    assert [r[0] for r in rows[1:]] == [str(k) for k in labels.tolist()]
    assert [r[1] for r in rows[1:]] == [str(k) for k in result.predicted.tolist()]
    assert metrics["test_accuracy"] == pytest.approx(result.accuracy, abs=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(sum(a == b for a, b in rows[1:]) / 100, abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(result.loss, abs=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-6)
    confusion = json.loads(p["confusion"].read_text())
    assert confusion["classes"] == [str(k) for k in range(10)]
    naive = [[0] * 10 for _ in range(10)]
    for actual, pred in rows[1:]:
        naive[int(actual)][int(pred)] += 1
    assert confusion["counts"] == naive

    # plot: the three PNGs, and nothing else
    run_plot(tiny, params)
    assert sorted(os.listdir(p["plots"])) == PLOTS
    for name in PLOTS:
        data = (p["plots"] / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data.endswith(b"IEND\xaeB`\x82")
        with Image.open(p["plots"] / name) as img:
            assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0
            img.verify()
    for folder in (p["model"].parent, p["metrics"].parent, p["plots"].parent):
        assert staging_leftovers(folder) == []


def test_training_twice_gives_byte_identical_outputs(trained):
    tiny, params = trained
    model2, history2 = tiny.root / "again" / "model.pt", tiny.root / "again" / "history.json"
    run_train(tiny, params, model=model2, history=history2)
    assert model2.read_bytes() == tiny.paths["model"].read_bytes()
    assert history2.read_bytes() == tiny.paths["history"].read_bytes()


def test_another_seed_gives_another_model(trained):
    tiny, _ = trained
    other = tiny.params(name="seed1.yaml", seed=1)
    model2 = tiny.root / "seed1" / "model.pt"
    run_train(tiny, other, model=model2, history=tiny.root / "seed1" / "history.json")
    assert model2.read_bytes() != tiny.paths["model"].read_bytes()


def test_plotting_twice_gives_identical_pngs(trained):
    tiny, params = trained
    run_evaluate(tiny, params)
    run_plot(tiny, params)
    first = {n: (tiny.paths["plots"] / n).read_bytes() for n in PLOTS}
    run_plot(tiny, params)
    assert {n: (tiny.paths["plots"] / n).read_bytes() for n in PLOTS} == first


class _Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_model_is_refused_before_its_code_runs(prepared):
    tiny, params = prepared
    marker = tiny.root / "code-ran"
    evil = tiny.root / "evil-model.pt"
    torch.save({"arch": _Payload(marker), "state_dict": {}}, evil)
    with pytest.raises(ValueError, match="weights_only") as err:
        run_evaluate(tiny, params, model=evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()
    for key in ("metrics", "confusion", "predictions"):
        assert not tiny.paths[key].exists()
    # Control: the file is really hostile, an unrestricted load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_plot_runs_without_torch(trained):
    """The plot stage draws from numpy arrays: a fresh process running it (tracking off) never imports torch."""
    tiny, params = trained
    run_evaluate(tiny, params)
    assert "torch" not in packages_imported_by(tiny, "plot", plot_argv(tiny, params))
    assert (tiny.paths["plots"] / "confusion_matrix.png").is_file()
