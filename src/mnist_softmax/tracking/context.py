"""Where and by whom a stage runs, without importing mlflow: the project root, the store's URI, the run's
context tags (git commit, DVC experiment, sweep trial) and the process identity that liveness checks use."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse


def project_root() -> Path:
    """The real project root: DVC sets DVC_ROOT there even when a queued run works in a temp copy."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def store_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a relative SQLite path taken from the project root, not from the working
    folder, which for a queued experiment is DVC's temp copy), else the SQLite store `mlflow ui` opens in
    the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{root / 'mlflow.db'}"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri.removeprefix('sqlite:///')}"
    return uri


def without_secrets(uri: str) -> str:
    """The URI without user, password or query (where tokens go): what may be printed or written down."""
    parsed = urlparse(uri)
    if not (parsed.username or parsed.password or parsed.query):
        return uri
    netloc = (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc, query="", fragment="").geturl()


# A sweep's worker (sweep.py) runs each trial with these variables; its stages tag their run with them.
STUDY_ENV, TRIAL_ENV, PARENT_RUN_ENV = (
    "MNIST_SOFTMAX_STUDY",
    "MNIST_SOFTMAX_TRIAL",
    "MNIST_SOFTMAX_PARENT_RUN",
)
STUDY_TAG, TRIAL_TAG = "sweep.study", "sweep.trial"


def run_context_tags() -> dict[str, str]:
    """Git commit, the DVC experiment this stage runs under and the sweep trial it is (when there are)."""
    tags = {}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=os.getcwd(),
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    if commit:
        tags["mlflow.source.git.commit"] = tags["git_commit"] = commit
    for env, tag in (
        ("DVC_EXP_NAME", "dvc_exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
        ("DVC_STAGE", "dvc_stage"),
        (STUDY_ENV, STUDY_TAG),
        (TRIAL_ENV, TRIAL_TAG),
        (PARENT_RUN_ENV, "mlflow.parentRunId"),
    ):  # the study's run: MLflow nests the trials in it
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This boot of this machine's kernel ("" where there is no such file)."""
    return _read("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot ("" if there is no such process): with the
    boot id, a pid that was reused by another process is told apart."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


def process_identity(pid: int | None = None) -> dict[str, str]:
    """Who runs a stage, as tags: host name, the kernel's boot id and pid namespace (containers on one host
    share a host name and reuse pids), the pid and its start time."""
    pid = pid or os.getpid()
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return {
        "pipeline.host": socket.gethostname(),
        "pipeline.boot_id": boot_id(),
        "pipeline.pid_namespace": namespace,
        "pipeline.pid": str(pid),
        "pipeline.pid_start": process_start(pid),
    }
