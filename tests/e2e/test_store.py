"""The store lock (tracking/store.py), with real processes: several stages opening a FRESH SQLite store at
the same instant (parallel queued experiments) all succeed. Without the lock MLflow's table creation races
(duplicate column name, alembic version mismatch): 4 processes, 3 trials, every process crashed."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests import harness as P

pytestmark = pytest.mark.e2e

OPEN_AT = """
import sys, time
from pathlib import Path
from mnist_softmax.tracking.tracker import MlflowTracker
root, ready, go, experiment = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
ready.touch()
while not go.exists():
    time.sleep(0.001)
print("experiment", MlflowTracker(experiment, root).experiment_id)
"""


def test_parallel_first_use_of_a_fresh_store(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    gate, elsewhere = (
        tmp_path / "gate",
        tmp_path / "cwd",
    )  # the stages' cwd: a queued run's temp copy
    gate.mkdir()
    elsewhere.mkdir()
    env = {**P.env(), "PYTHONPATH": str(P.ROOT)}
    procs = [
        subprocess.Popen(
            [
                str(P.BIN / "python"),
                "-c",
                OPEN_AT,
                str(root),
                str(gate / f"ready{i}"),
                str(gate / "go"),
                P.EXPERIMENT,
            ],
            cwd=elsewhere,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(gate.glob("ready*"))) < len(procs) and time.monotonic() < deadline:  # all imported mlflow
        time.sleep(0.05)
    (gate / "go").touch()  # then all open the store at once
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outputs)
    ids = {line.split()[-1] for out in outputs for line in out.splitlines() if line.startswith("experiment ")}
    assert len(ids) == 1, outputs
    experiments = {e.name: e.artifact_location for e in P.mlflow_client(root).search_experiments()}
    # Default, created with the store, points at this root's mlruns/ too (not at the processes' cwd).
    assert experiments == {
        P.EXPERIMENT: (root / "mlruns").as_uri(),
        "Default": (root / "mlruns" / "0").as_uri(),
    }
    assert list(elsewhere.iterdir()) == []
