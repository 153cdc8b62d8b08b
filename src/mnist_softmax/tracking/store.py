"""Opening the MLflow store: checked before any work, created safely when several processes race to it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_softmax.errors import ExplainedError
from mnist_softmax.tracking.context import project_root, store_uri, without_secrets


class TrackingError(ExplainedError, RuntimeError):
    """The tracking store cannot be used; raised before any expensive work."""


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store URI (store_uri makes them absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if urlparse(uri).scheme == "sqlite" else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialize first use of a SQLite store across processes (parallel queued runs): table creation and
    experiment creation race otherwise (duplicate column; mlflow#10334)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _create_sqlite_store(uri: str, artifact_root: str) -> None:
    """Create a missing (or empty) SQLite store with the project's mlruns/ as its default artifact root.
    Left to MlflowClient, the store's built-in Default experiment would point at ./mlruns of whichever
    directory first opened it: for a queued experiment, a temp copy under .dvc/tmp/exps that DVC deletes.
    Call it under _store_lock."""
    db = sqlite_file(uri)
    if db is None or (db.is_file() and db.stat().st_size):
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(uri, artifact_root)  # creates the tables and the Default experiment


# MLflow's defaults retry a failed HTTP call for minutes: a stage would hang on a dead server, and Ctrl-C
# behind it. Fail within seconds instead; what ends runs of vanished processes records the end later.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# After an interrupt or a failure, the stage's last calls (its outcome, closing the run) try once, briefly: the
# stage's guard, or the next stage that opens the store, records what they could not.
HTTP_LAST_CALLS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
PROBE_S = 3  # a server that answers no /health request in this long is lost


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def fail_fast(uri: str) -> None:
    """Short HTTP retries for a tracking server (a user's own MLFLOW_HTTP_REQUEST_* settings win)."""
    if is_server(uri):
        for name, value in HTTP_RETRIES.items():
            os.environ.setdefault(name, value)


def last_calls(uri: str) -> None:
    """From now on, calls to the tracking server try once, briefly (see HTTP_LAST_CALLS)."""
    if is_server(uri):
        os.environ.update(HTTP_LAST_CALLS)


def unreachable(uri: str) -> str | None:
    """Why the tracking server of `uri` does not answer now, or None (it answers, whatever the status, or `uri`
    is no server). A stopped server still accepts connections: only an answer counts."""
    if not is_server(uri):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_S).close()
    except urllib.error.HTTPError:
        return None  # it answered (401 without credentials, say)
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
        return str(getattr(e, "reason", e))
    return None


@contextlib.contextmanager
def server_lost(uri: str) -> Iterator[None]:
    """A call that fails because the tracking server is gone raises one clear TrackingError."""
    try:
        yield
    except Exception as e:
        reason = unreachable(uri)
        if reason is None:
            raise
        raise TrackingError(f"lost the MLflow tracking server {without_secrets(uri)} ({reason})") from e


def _check_reachable(uri: str) -> None:
    if reason := unreachable(uri):
        raise TrackingError(f"MLflow tracking server {without_secrets(uri)} is unreachable: {reason}")


def _check_writable(uri: str) -> None:
    """An existing SQLite store must take writes: a read-only file (chattr +i, read-only mount, no permission)
    opens fine and fails only at the first write, after the data is loaded. Probe with a write that is
    rolled back; a busy or locked store is not an error here (MLflow waits for it)."""
    db = sqlite_file(uri)
    if db is None or not db.is_file():
        return
    try:
        con = sqlite3.connect(db, timeout=20, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE _pipeline_write_probe (x)")  # journaled like any write, then undone
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return
        raise TrackingError(
            f"the MLflow store {without_secrets(uri)} cannot be written ({e}); make {db} and its"
            " folder writable, or set MLFLOW_TRACKING_URI to another store"
        ) from e


def _experiment_id(client: MlflowClient, uri: str, name: str, location: str | None) -> str:
    """The experiment's id, creating it if need be. Creators racing on a fresh server all but one get
    RESOURCE_ALREADY_EXISTS: those read the winner's."""
    for _ in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            # Its name stays taken until it is restored or garbage-collected: the run would fail later.
            raise TrackingError(
                f"experiment {name!r} (id {exp.experiment_id}) is deleted in {without_secrets(uri)}; restore it"
                f" with `MLFLOW_TRACKING_URI={shlex.quote(without_secrets(uri))} mlflow experiments restore"
                f" --experiment-id {exp.experiment_id}` or set tracking.experiment to another name"
            )
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        time.sleep(0.2)
    raise TrackingError(f"experiment {name!r} neither exists nor can be created in {without_secrets(uri)}")


def open_store(experiment: str, root: Path | None = None) -> tuple[MlflowClient, str, str]:
    """(client, experiment id, store URI) of the project's store (MLFLOW_TRACKING_URI, else its mlflow.db),
    the experiment created if need be. A TrackingError says why the store cannot be used."""
    uri = store_uri(root or project_root())
    fail_fast(uri)
    _check_reachable(uri)
    _check_writable(uri)
    try:
        with _store_lock(uri):
            # A SQLite store's artifacts go to mlruns/ beside it, by absolute path: MLflow's default is
            # ./mlruns of whoever creates the experiment, for a queued run a temp copy DVC deletes.
            db = sqlite_file(uri)
            artifacts = (db.parent / "mlruns").as_uri() if db else None
            if artifacts:
                _create_sqlite_store(uri, artifacts)
            client = MlflowClient(uri)
            return client, _experiment_id(client, uri, experiment, artifacts), uri
    except MlflowException as e:
        raise TrackingError(f"cannot use the MLflow store {without_secrets(uri)}: {e.message}") from e
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"cannot use the MLflow store {without_secrets(uri)}: {e}") from e


def project_client() -> MlflowClient:
    """A client of the store this project's stages use, without creating anything."""
    return MlflowClient(store_uri(project_root()))
