"""Fault-injection fixtures: a real copy of the project (git + DVC) on a tiny synthetic dataset, whose stage
processes the tests start, watch and kill (helpers in tests/harness.py).

`base_project` (once per session) makes the copy, registers the tiny dataset in it, commits, runs
`dvc repro preprocess` and creates the MLflow store. `project` gives each test its own byte copy of that
(cache, lock, data and store included), so it starts with download and preprocess done.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness as H
from tests import synthetic

TRAIN_CMD = [
    "python",
    "-m",
    "pipeline.train",
    "--params",
    "params.yaml",
    "--data",
    "data/prepared",
    "--model",
    "models/model.pt",
    "--history",
    "metrics/train_history.json",
    "--checkpoint",
    ".checkpoints/train.pt",
]


class Project:
    def __init__(self, path: Path, raw_dir: Path):
        self.path, self.raw_dir = path, raw_dir
        self._procs: list[H.Proc] = []

    def params(self, **overrides) -> dict:
        """Write params.yaml: the tiny dataset's params from the `dir:` source, plus dotted overrides."""
        params = synthetic.tiny_params([f"dir:{self.raw_dir}"], **overrides)
        synthetic.write_params(self.path / "params.yaml", params)
        return params

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    @property
    def db(self) -> Path:
        return self.path / "mlflow.db"

    def runs(self) -> list:
        return H.runs(self.path)

    def wait_for_status(self, status: str, index: int = -1, timeout: float = 60):
        """The store's run `index` (oldest first) once its status is `status`: a guard takes a few seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.runs()[index]
            if run.info.status == status or time.monotonic() > deadline:
                assert run.info.status == status, (run.info.status, run.data.tags)
                return run
            time.sleep(0.5)

    def steps(self, run, key: str = "train_loss") -> list[int]:
        return H.steps(self.path, run.info.run_id, key)

    def run(self, *args, timeout: float = H.WAIT_S, env_: dict | None = None) -> subprocess.CompletedProcess:
        return H.run(list(args), self.path, check=False, timeout=timeout, env_=env_)

    def dvc(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, **kw)

    def start(self, *args, env_: dict | None = None) -> H.Proc:
        proc = H.Proc(list(args), self.path, env_)
        self._procs.append(proc)
        return proc

    def stage_pid(self, module: str, timeout: float = H.WAIT_S) -> int:
        return H.wait_for_stage(module, self.path, timeout)

    def cleanup(self):
        for proc in self._procs:
            proc.kill_tree()
        H.kill_stages(self.path)  # a stage DVC started lives in DVC's session, not ours


def files_for_tests() -> dict[str, bytes]:
    return synthetic.raw_files(n_train=600, n_test=100)


@pytest.fixture(scope="session")
def raw_files() -> dict[str, bytes]:
    return files_for_tests()


@pytest.fixture(scope="session")
def base_project(tmp_path_factory, raw_files) -> Project:
    """Project copy with the tiny dataset downloaded and preprocessed by DVC, committed in git."""
    top = tmp_path_factory.mktemp("faults")
    raw_dir = synthetic.write_files(top / "raw-gz", raw_files, gz=True)
    path = H.make_project(
        top / "base",
        synthetic.tiny_params([f"dir:{raw_dir}"]),
        synthetic.registration_code(raw_files),
    )
    project = Project(path, raw_dir)
    for cmd in (
        ["dvc", "repro", "preprocess"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "prepared"],
        # The project's MLflow store, created once (tables + experiment) as after a first training.
        [
            "python",
            "-c",
            f"from mnist_softmax.tracking.tracker import MlflowTracker; MlflowTracker({H.EXPERIMENT!r})",
        ],
    ):
        done = project.run(*cmd)
        assert done.returncode == 0, f"{cmd}: {done.stdout}"
    return project


@pytest.fixture
def project(base_project, tmp_path) -> Iterator[Project]:
    """A private copy of base_project for one test; its processes are killed after. (Its store's experiment
    keeps the base's artifact folder: runs have their own ids there.)"""
    path = tmp_path / "project"
    shutil.copytree(base_project.path, path, symlinks=True)
    proj = Project(path, base_project.raw_dir)
    yield proj
    proj.cleanup()
