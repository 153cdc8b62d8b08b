"""An unusable MLflow store stops the train stage clearly before any data is loaded or epoch trained;
it exits non-zero and DVC caches nothing."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.harness import env


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def run_cache(project) -> list[str]:
    root = project.path / ".dvc" / "cache" / "runs"
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else []


def assert_stopped_before_training(project, done, lock, cache):
    assert done.returncode != 0, done.stdout
    assert "Running stage 'train'" in done.stdout
    assert "epoch " not in done.stdout  # the message came first: no epoch was trained
    assert "Traceback" not in done.stdout
    assert project.read("dvc.lock") == lock and run_cache(project) == cache
    assert not (project.path / "models/model.pt").exists()


def test_unreachable_tracking_server(project):
    project.params(**{"train.epochs": 3})
    lock, cache = project.read("dvc.lock"), run_cache(project)
    uri = f"http://127.0.0.1:{closed_port()}"
    done = project.dvc("repro", "train", env_=env(MLFLOW_TRACKING_URI=uri))
    assert f"train: error: MLflow tracking server {uri} is unreachable" in done.stdout, done.stdout
    assert_stopped_before_training(project, done, lock, cache)


def test_read_only_sqlite_store(project):
    """The store file made immutable (chattr +i): as root, chmod 444 would not stop writes, this does."""
    project.params(**{"train.epochs": 3})
    lock, cache = project.read("dvc.lock"), run_cache(project)
    before = project.db.read_bytes()
    made = subprocess.run(["chattr", "+i", str(project.db)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here (chattr +i: {made.stderr.strip()})")
    try:
        with pytest.raises(PermissionError):
            open(project.db, "r+b").close()  # really read-only, even for root
        done = project.dvc("repro", "train")
    finally:
        subprocess.run(["chattr", "-i", str(project.db)], check=True)
    assert (
        f"train: error: the MLflow store sqlite:///{project.db} cannot be written (attempt to write a readonly"
        " database)" in done.stdout
    ), done.stdout
    assert_stopped_before_training(project, done, lock, cache)
    assert project.db.read_bytes() == before
