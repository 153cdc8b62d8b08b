"""The run's MLflow model: code (served_model.py, MLflow's models-from-code) plus the weights in safetensors,
so loading it unpickles nothing. pyfunc-loadable; `mlflow models serve` serves it.

What it takes: pixels as the IDX files hold them, 0-255, one image a row, shape (n, 784) or (n, 28, 28)
(a JSON `{"inputs": [[...], ...]}`, a CSV or a DataFrame of 784 columns). It normalizes them as the pipeline
does. What it gives: a frame with `label` (the predicted class index) and `prob_<k>` (the probability of
class k, softmax of the logits). Anything else is refused, saying what is expected.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mnist_softmax.core.preprocess import PIXEL_MAX, normalize, to_unit
from mnist_softmax.fileio import explained_disk_full, read_json

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # shipped whole as the model's code
SERVED_MODEL = Path(__file__).with_name("served_model.py")
# What the model's code needs besides mlflow. Naming them skips MLflow's requirement inference, a
# subprocess that reloads the model.
MODEL_PACKAGES = ("torch", "numpy", "pandas", "safetensors", "tqdm")


def requirements() -> list[str]:
    """`pkg==version` of MODEL_PACKAGES as installed (local labels such as +cu130 dropped); MLflow adds mlflow."""
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in MODEL_PACKAGES]


def checked_pixels(model_input: Any, image_shape: list[int]) -> np.ndarray:
    """The input as an (n, H*W) array of pixels, or an MlflowException saying what is expected."""
    height, width = image_shape
    expected = (
        f"expected pixels 0-255 (as in the IDX files), one image a row: shape (n, {height * width}) or"
        f" (n, {height}, {width})"
    )
    try:
        pixels = np.asarray(model_input, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MlflowException(f"{expected}; got values that are not numbers ({e})", INVALID_PARAMETER_VALUE) from e
    if pixels.ndim == 3 and pixels.shape[1:] == (height, width):
        pixels = pixels.reshape(pixels.shape[0], height * width)
    if pixels.ndim != 2 or pixels.shape[1] != height * width or pixels.shape[0] == 0:
        raise MlflowException(f"{expected}; got shape {pixels.shape}", INVALID_PARAMETER_VALUE)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > PIXEL_MAX:
        found = f"{np.nanmin(pixels)}..{np.nanmax(pixels)}" if np.isfinite(pixels).any() else "no finite value"
        raise MlflowException(f"{expected}; got values {found}", INVALID_PARAMETER_VALUE)
    return pixels


def classify(model: Any, pixels: np.ndarray, preprocessing: dict) -> pd.DataFrame:
    """`label` and `prob_<k>` for each row of checked pixels, normalized as preprocess does."""
    import torch

    x = normalize(to_unit(pixels), preprocessing["mean"], preprocessing["std"])
    with torch.inference_mode():
        was_training = model.training
        probs = torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()
        model.train(was_training)
    frame = pd.DataFrame({"label": probs.argmax(axis=1).astype(np.int64)})
    for k in range(probs.shape[1]):
        frame[f"prob_{k}"] = probs[:, k].astype(np.float64)
    return frame


def log_model(model: Any, arch: dict, preprocessing: dict, input_example: np.ndarray) -> str:
    """Log `model` into the active run; returns its URI (models:/<model_id>). `preprocessing`: the mean and
    std the pipeline normalized with, the image shape and the class names; `input_example`: a few images'
    pixels."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from safetensors.torch import save_file

    output = classify(model, checked_pixels(input_example, preprocessing["image_shape"]), preprocessing)
    # No input schema: it would allow one shape; checked_pixels checks both and says what it expects.
    columns: list[ColSpec | TensorSpec] = [ColSpec("long", "label")]
    columns += [ColSpec("double", name) for name in output.columns[1:]]
    signature = ModelSignature(inputs=None, outputs=Schema(columns))
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / name for name in ("model.safetensors", "architecture.json", "preprocessing.json")}
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(files["model.safetensors"]))
        files["architecture.json"].write_text(json.dumps(arch))
        files["preprocessing.json"].write_text(json.dumps(preprocessing))
        with explained_disk_full("the run's MLflow model"):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVED_MODEL),
                code_paths=[str(PACKAGE_DIR)],
                artifacts={
                    "weights": str(files["model.safetensors"]),
                    "architecture": str(files["architecture.json"]),
                    "preprocessing": str(files["preprocessing.json"]),
                },
                signature=signature,
                input_example=input_example,
                pip_requirements=requirements(),
            )
    return info.model_uri


def serve_classifier() -> None:
    """What served_model.py runs when MLflow loads the model: hand MLflow the model object (models-from-code)."""
    from mlflow.pyfunc import PythonModel

    class Classifier(PythonModel):
        def load_context(self, context):
            from safetensors.torch import load_file

            from mnist_softmax.core.model import build, check_weights, checked_architecture

            arch = checked_architecture(read_json(context.artifacts["architecture"]), "the MLflow model")
            weights = load_file(context.artifacts["weights"])
            check_weights(weights, arch, "the MLflow model")
            self.model = build(arch)
            self.model.load_state_dict(weights)
            self.model.eval()
            self.preprocessing = read_json(context.artifacts["preprocessing"])

        def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
            pixels = checked_pixels(model_input, self.preprocessing["image_shape"])
            return classify(self.model, pixels, self.preprocessing)

    mlflow.models.set_model(Classifier())
