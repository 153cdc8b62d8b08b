"""params.yaml -> frozen, strictly typed settings (read and refused as settings.py says).

No defaults here: every key must be in the file. Each field's type and bounds are what the stages accept;
every problem (unknown, missing, mistyped, out of range) is refused before any stage does any work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, Strict, ValidationInfo, field_validator

from mnist_softmax.core.datasets import DATASETS
from mnist_softmax.core.settings import ParamsError, StrictModel, read_yaml, validate

# torchvision[:URL] | npm:NAME@X.Y.Z (a registry package at an exact version) | dir:PATH
SOURCE_PATTERN = r"^(torchvision(:https?://\S+)?|npm:(@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*@\d+\.\d+\.\d+|dir:.+)$"
SOURCE_FORMS = "torchvision | torchvision:URL | npm:NAME@X.Y.Z | dir:PATH"


# _listed(...) and _number(...) are calls that build the Annotated types pydantic reads at runtime; mypy cannot
# read a call as a type, hence the `type: ignore[valid-type]` where they are used.


def _listed(item):
    """A YAML list, held as a tuple (the settings are frozen), each item strictly `item`."""
    return Annotated[tuple[item, ...], Strict(False)]  # type: ignore[valid-type]


def _number(**bounds):
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


Source = Annotated[str, Field(pattern=SOURCE_PATTERN)]


class NormalizeParams(StrictModel):
    mean: _number() | Literal["auto"]  # type: ignore[valid-type]
    std: _number(gt=0) | Literal["auto"]  # type: ignore[valid-type]


class DataParams(StrictModel):
    dataset: str
    sources: dict[str, Annotated[_listed(Source), Field(min_length=1, max_length=16)]] = Field(min_length=1)  # type: ignore[valid-type]
    normalize: NormalizeParams

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"Input should be one of {' | '.join(DATASETS)}")
        return name

    @field_validator("sources")
    @classmethod
    def _known_datasets(cls, sources: dict, info: ValidationInfo) -> dict:
        unknown = [name for name in sources if name not in DATASETS]
        if unknown:
            raise ValueError(f"keys should be datasets ({' | '.join(DATASETS)}), not {', '.join(unknown)}")
        chosen = info.data.get("dataset")  # absent when data.dataset itself is invalid
        if chosen is not None and chosen not in sources:
            raise ValueError(f"no source list for the chosen dataset {chosen!r}")
        return sources


LAYER_MAX = 4096  # the widest layer; also what a model file may hold (model.py)
HiddenSizes = Annotated[_listed(Annotated[int, Field(ge=1, le=LAYER_MAX)]), Field(min_length=1, max_length=8)]  # type: ignore[valid-type]
Activation = Literal["relu", "tanh", "sigmoid", "gelu"]


class ModelParams(StrictModel):
    hidden_sizes: HiddenSizes  # type: ignore[valid-type]
    activation: Activation


class TrainParams(StrictModel):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=60_000)
    optimizer: Literal["sgd", "adam"]
    lr: _number(gt=0, le=1e6)  # type: ignore[valid-type]
    momentum: _number(ge=0, lt=1)  # type: ignore[valid-type]  # sgd only
    betas: Annotated[_listed(_number(ge=0, lt=1)), Field(min_length=2, max_length=2)]  # type: ignore[valid-type]  # adam only
    weight_decay: _number(ge=0, le=1)  # type: ignore[valid-type]
    eval_batch_size: int = Field(ge=1, le=100_000)
    threads: int = Field(ge=1, le=256)
    device: Literal["auto", "cpu", "cuda"]
    checkpoint: bool


class PlotParams(StrictModel):
    misclassified: int = Field(ge=0, le=400)
    dpi: int = Field(ge=20, le=600)


class TrackingParams(StrictModel):
    enabled: bool
    experiment: str = Field(min_length=1, max_length=200, pattern=r"\S")
    log_model: bool


class Params(StrictModel):
    seed: int = Field(ge=0, le=2**32 - 1)
    data: DataParams
    model: ModelParams
    train: TrainParams
    plot: PlotParams
    tracking: TrackingParams


def parse_params(raw, source: str = "params.yaml") -> Params:
    return validate(Params, raw, source, {SOURCE_PATTERN: f"a source: {SOURCE_FORMS}"})


# `dvc exp run -S` writes its values into params.yaml and deletes the stages' outputs before they run.
RESTORE = "git checkout HEAD -- params.yaml && dvc checkout"


def load_params(path: str | Path) -> Params:
    """params.yaml, validated. Refused under `dvc exp run` in the workspace, the message also says how to put
    the workspace back as it was."""
    try:
        return parse_params(read_yaml(path), str(path))
    except ParamsError as e:
        if os.environ.get("DVC_EXP_NAME") and Path(os.environ.get("DVC_ROOT", "")).resolve() == Path.cwd():
            raise ParamsError(f"{e}\nDVC wrote this into the workspace; to put it back: {RESTORE}") from None
        raise


def flatten(params: Params) -> dict[str, str]:
    """Every param as `section.key` -> string, the form MLflow stores (lists as JSON)."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = json.dumps(list(node)) if isinstance(node, (list, tuple)) else str(node)

    walk(params.model_dump(), "")
    return out
