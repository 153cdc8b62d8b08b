"""The run's MLflow model: code (served_model.py, MLflow's models-from-code) plus the weights in safetensors,
so loading it unpickles nothing. pyfunc-loadable; `mlflow models serve` serves it."""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow

from mnist_softmax.fileio import explained_disk_full, read_json

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # shipped whole as the model's code
SERVED_MODEL = Path(__file__).with_name("served_model.py")
# What the model's code needs besides mlflow. Naming them skips MLflow's requirement inference, a
# subprocess that reloads the model.
MODEL_PACKAGES = ("torch", "numpy", "safetensors", "tqdm")


def requirements() -> list[str]:
    """`pkg==version` of MODEL_PACKAGES as installed (local labels such as +cu130 dropped); MLflow adds mlflow."""
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in MODEL_PACKAGES]


def log_model(model: Any, arch: dict, input_example: Any) -> str:
    """Log `model` into the active run; returns its URI (models:/<model_id>)."""
    import torch
    from mlflow.models import infer_signature
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        weights, architecture = Path(tmp) / "model.safetensors", Path(tmp) / "architecture.json"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
        architecture.write_text(json.dumps(arch))
        with torch.inference_mode():
            was_training = model.training
            output = model.eval()(torch.as_tensor(input_example)).numpy()
            model.train(was_training)
        with explained_disk_full("the run's MLflow model"):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVED_MODEL),
                code_paths=[str(PACKAGE_DIR)],
                artifacts={"weights": str(weights), "architecture": str(architecture)},
                signature=infer_signature(input_example, output),
                input_example=input_example,
                pip_requirements=requirements(),
            )
    return info.model_uri


def serve_classifier() -> None:
    """What served_model.py runs when MLflow loads the model: hand MLflow the model object (models-from-code).
    The served model gives logits for a batch of normalized 784-pixel rows."""
    from mlflow.pyfunc import PythonModel  # mypy cannot follow mlflow's lazy mlflow.pyfunc

    class Classifier(PythonModel):
        def load_context(self, context):
            from safetensors.torch import load_file

            from mnist_softmax.core.model import build

            self.model = build(read_json(context.artifacts["architecture"]))
            self.model.load_state_dict(load_file(context.artifacts["weights"]))
            self.model.eval()

        def predict(self, context, model_input, params=None):
            import numpy as np
            import torch

            with torch.inference_mode():
                return self.model(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()

    mlflow.models.set_model(Classifier())
