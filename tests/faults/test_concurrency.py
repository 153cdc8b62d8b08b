"""Two `dvc repro` in one workspace, and two trainings hitting a fresh MLflow store at once."""

from __future__ import annotations

import hashlib
import os
import signal

import yaml

from tests import harness as H
from tests.faults.conftest import TRAIN_CMD


def test_second_dvc_repro_fails_fast_on_the_lock_and_the_first_completes(project):
    """The second fails fast with DVC's lock message; the first completes; dvc.lock matches the
    workspace. The first repro's train stage is held with SIGSTOP while the second starts, so the two overlap
    for certain (no timing guess); then it is let go with SIGCONT and must finish normally."""
    project.params(**{"train.epochs": 20, "tracking.enabled": False})
    first = project.start("dvc", "repro", "train")
    first.wait_for(r"^epoch +1/20 ")
    train_pid = project.stage_pid("pipeline.train")
    os.kill(train_pid, signal.SIGSTOP)
    try:
        second = project.dvc("repro", "train", timeout=120)
    finally:
        os.kill(train_pid, signal.SIGCONT)
    assert second.returncode != 0
    # DVC's repo lock ("Unable to acquire lock") or, as DVC 3 releases it while a stage's command runs, its
    # per-path lock on the stage's deps/outs, naming the first process.
    assert (
        "Unable to acquire lock" in second.stdout
        or f"is busy, it is being blocked by:\n  (PID {first.popen.pid}): " in second.stdout
    ), second.stdout
    assert "Running stage" not in second.stdout

    assert first.wait() == 0, first.output
    lock = yaml.safe_load(project.read("dvc.lock"))
    outs = {o["path"]: o["md5"] for o in lock["stages"]["train"]["outs"]}
    for path, md5 in outs.items():
        assert hashlib.md5(project.read(path)).hexdigest() == md5, path
    status = project.dvc("status", "train")
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout, status.stdout


def test_two_trainings_on_a_fresh_store_at_once(project, tmp_path):
    """Two `python -m pipeline.train` started together on a new, empty SQLite store: both finish,
    one experiment, two FINISHED runs with every metric of every epoch; no schema race, no lock error."""
    db = tmp_path / "fresh" / "mlflow.db"
    assert not db.parent.exists()
    epochs = 5
    project.params(**{"train.epochs": epochs})
    uri = f"sqlite:///{db}"
    e = H.env(MLFLOW_TRACKING_URI=uri, PYTHONPATH="src")  # the copy's package, as its dvc.yaml runs it
    procs = []
    for name in ("a", "b"):
        cmd = [*TRAIN_CMD]
        for flag, value in (
            ("--model", f"models/{name}.pt"),
            ("--history", f"metrics/{name}.json"),
            ("--checkpoint", f".checkpoints/{name}.pt"),
        ):
            cmd[cmd.index(flag) + 1] = value
        procs.append(project.start(*cmd, env_=e))
    for proc in procs:
        assert proc.wait() == 0, proc.output
        for bad in ("database is locked", "duplicate column", "UNIQUE constraint", "Traceback"):
            assert bad not in proc.output, proc.output

    found = H.runs(uri)
    assert len(found) == 2 and {r.info.status for r in found} == {"FINISHED"}
    assert len({r.data.tags["pipeline.pid"] for r in found}) == 2
    for run in found:
        for key in ("train_loss", "test_loss", "test_accuracy", "system/epoch_seconds"):
            assert H.steps(uri, run.info.run_id, key) == list(range(1, epochs + 1)), (
                run.info.run_id,
                key,
            )
    names = [e.name for e in H.mlflow_client(uri).search_experiments()]
    assert sorted(names) == sorted(["Default", H.EXPERIMENT])
