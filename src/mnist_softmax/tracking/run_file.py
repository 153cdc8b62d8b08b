"""The run file (`--run-file`, `.mlflow-run.json`): which MLflow run this working copy's model belongs to.

The train stage writes it when its run starts and again with the model's SHA-256 when it succeeds; evaluate
and plot read it to attach to that run. It is git-ignored and never a DVC output, so outputs stay
byte-identical whatever run made them. A link only counts for the same model, store and DVC experiment.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_softmax.fileio import read_json, write_json_atomic
from mnist_softmax.tracking.context import without_secrets


@dataclass(frozen=True)
class RunLink:
    run_id: str
    model_sha256: str | None  # None while the training runs
    reused: bool  # the run was trained for another DVC experiment
    store: str
    dvc_exp_name: str


def current_exp_name() -> str:
    return os.environ.get("DVC_EXP_NAME", "")


def write_link(path: Path, run_id: str, model_sha256: str | None, reused: bool, store: str) -> None:
    store = without_secrets(store)  # the file keeps the umask's mode: no credentials in it
    write_json_atomic(path, asdict(RunLink(run_id, model_sha256, reused, store, current_exp_name())))


def read_link(path: Path, model_sha256: str, store: str) -> RunLink | None:
    """The link, if the file is readable and names this model, store and DVC experiment."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return None
    store = without_secrets(store)
    expected = {"model_sha256": model_sha256, "store": store, "dvc_exp_name": current_exp_name()}
    if any(data.get(k) != v for k, v in expected.items()):
        return None
    return RunLink(data["run_id"], model_sha256, bool(data.get("reused")), store, current_exp_name())
