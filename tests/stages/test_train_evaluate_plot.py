"""Stages train -> evaluate -> plot, chained in-process on the tiny dataset with tracking off."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from PIL import Image

from src.model import load_model
from src.params import load_params
from src.prepared_torch import load_split
from src.train import predict
from tests.stages.helpers import (packages_imported_by, plot_argv, run_evaluate, run_plot, run_stage_program,
                                  run_train, staging_leftovers)

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
    assert set(metrics) == {"test_accuracy", "test_loss", "per_class_accuracy"}
    assert list(metrics["per_class_accuracy"]) == [str(k) for k in range(10)]
    with open(p["predictions"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"]
    test = load_split(p["prepared"] / "test.safetensors")
    assert len(rows) - 1 == test.labels.numel() == 100
    model, _ = load_model(p["model"])
    loss, accuracy, predicted, _ = predict(model, test.images, test.labels, batch_size=100)
    assert [r[0] for r in rows[1:]] == [str(k) for k in test.labels.tolist()]
    assert [r[1] for r in rows[1:]] == [str(k) for k in predicted.tolist()]
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(sum(a == b for a, b in rows[1:]) / 100, abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(loss, abs=1e-5)
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
    """The plot stage reads the prepared arrays with numpy: a fresh process running it never imports torch."""
    tiny, params = trained
    run_evaluate(tiny, params)
    assert "torch" not in packages_imported_by(tiny, "plot", plot_argv(tiny, params))
    assert (tiny.paths["plots"] / "confusion_matrix.png").is_file()


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="strict CNR is an MKL mode")
def test_train_writes_the_same_model_with_one_and_two_threads(prepared):
    """A train stage process asks MKL for strict CNR (src/mkl.py) before it multiplies anything, so 1 and 2
    threads write the same files: the default model's widths, an environment without MKL_CBWR. The control,
    1 and 2 threads with strict CNR switched off (MKL_CBWR empty), must differ, or this machine's MKL gives
    these products the same bits anyway and the test would prove nothing."""
    tiny, _ = prepared
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}

    def train_files(threads: int, extra_env: dict) -> tuple[bytes, bytes]:
        name = f"{threads}_{len(extra_env)}"
        params = tiny.params(name=f"params_{name}.yaml", **{"train.threads": threads, "train.epochs": 2,
                                                             "model.hidden_sizes": [512, 256, 128, 64]})
        model, history = tiny.root / f"model_{name}.pt", tiny.root / f"history_{name}.json"
        run_stage_program(tiny, "train", ["--params", str(params), "--data", tiny.path("prepared"),
                                          "--model", str(model), "--history", str(history)], {**env, **extra_env})
        return model.read_bytes(), history.read_bytes()

    off = {"MKL_CBWR": ""}
    if train_files(1, off) == train_files(2, off):
        pytest.skip("without strict CNR, 1 and 2 threads gave the same bits here: nothing to tell apart")
    assert train_files(1, {}) == train_files(2, {})


def test_train_without_a_compiler_stops_before_training_and_manual_still_trains(prepared, tmp_path):
    """The train stage in a new process on a machine without a working C++ compiler (CXX fails, an empty
    extension cache): manual-cpp stops before training with the fix in the message; manual trains."""
    tiny, _ = prepared
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
    runs = {}
    for backward in ("manual-cpp", "manual"):
        argv = ["--params", str(tiny.params(**{"train.backward": backward})), "--data", tiny.path("prepared"),
                "--model", tiny.path("model"), "--history", tiny.path("history")]
        runs[backward] = run_stage_program(tiny, "train", argv, env, check=False)
        if backward == "manual-cpp":
            assert not tiny.paths["model"].exists() and not tiny.paths["history"].exists()
    failed, trained = runs["manual-cpp"], runs["manual"]
    assert failed.returncode == 1 and "epoch" not in failed.stdout
    assert failed.stderr.startswith("train: error: could not build or load manual_step.cpp")
    assert "set train.backward: manual" in failed.stderr and "Traceback" not in failed.stderr
    assert trained.returncode == 0, trained.stderr
    assert tiny.paths["model"].exists()
