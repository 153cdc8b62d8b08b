"""An unusable MLflow store stops the train stage clearly before any data is loaded or epoch trained;
it exits non-zero and DVC caches nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests import harness as H
from tests.faults.conftest import TRAIN_CMD
from tests.harness import env


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
    uri = f"http://127.0.0.1:{H.free_port()}"  # nothing listens on it
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


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite behind it), started and killed by the test, same port."""

    def __init__(self, folder):
        self.folder, self.port = folder, H.free_port()
        self.proc: H.Proc | None = None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        args = [
            "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        self.proc = H.Proc(args, self.folder, env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + H.WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=5):
                return
            time.sleep(0.5)
        raise AssertionError(f"mlflow server did not start:\n{self.proc.output}")

    def kill(self):
        assert self.proc is not None
        self.proc.kill_tree()

    def hang(self):
        """SIGSTOP: it still takes connections, and never answers."""
        assert self.proc is not None
        os.killpg(self.proc.popen.pid, signal.SIGSTOP)


def train(project, uri) -> H.Proc:
    """A long training on the server (epochs are milliseconds here), once its first epoch is logged."""
    project.params(**{"train.epochs": 5000})
    proc = project.start(*TRAIN_CMD, env_=env(MLFLOW_TRACKING_URI=uri, PYTHONPATH="src"))  # its tiny dataset
    proc.wait_for(r"^epoch +1/")
    return proc


def test_a_lost_tracking_server_is_one_clear_error_and_ctrl_c_does_not_wait_for_it(project, tmp_path):
    """A killed server, then a hung one: MLflow's own retries would hold each call for minutes. The next
    stage to open the store ends the run."""
    server = MlflowServer(tmp_path)
    server.start()
    lost = train(project, server.uri)
    server.kill()
    assert lost.wait(timeout=90) == 1, lost.output  # the ceiling only catches a hang: MLflow's defaults
    assert f"train: error: lost the MLflow tracking server {server.uri} (" in lost.output, lost.output
    assert "Traceback" not in lost.output

    server.start()
    interrupted = train(project, server.uri)  # its stage opened the store: the lost run is ended
    first = H.runs(server.uri)[0]
    assert first.info.status == "FAILED"
    assert "ended without closing the run" in first.data.tags["pipeline.end_reason"]
    server.hang()
    try:
        interrupted.popen.send_signal(signal.SIGINT)
        assert interrupted.wait(timeout=60) == 130, interrupted.output  # each call would wait 10 s, 3 times
    finally:
        server.kill()
    assert "train: interrupted (Ctrl-C)" in interrupted.output
    assert "Traceback" not in interrupted.output


def test_a_deleted_experiment_is_refused_at_once_with_the_command_that_restores_it(project):
    project.params(**{"train.epochs": 3})
    client = H.mlflow_client(project.path)
    experiment = client.get_experiment_by_name(H.EXPERIMENT)
    client.delete_experiment(experiment.experiment_id)
    lock, cache = project.read("dvc.lock"), run_cache(project)
    done = project.dvc("repro", "train")
    command = re.search(r"restore it with `([^`]+)`", done.stdout)
    assert command and f"train: error: experiment {H.EXPERIMENT!r} (id {experiment.experiment_id}) is deleted" in (
        done.stdout
    ), done.stdout
    assert_stopped_before_training(project, done, lock, cache)

    restored = project.run("bash", "-c", command.group(1))
    assert restored.returncode == 0, restored.stdout
    assert project.dvc("repro", "train").returncode == 0
    assert H.mlflow_client(project.path).get_experiment(experiment.experiment_id).lifecycle_stage == "active"
