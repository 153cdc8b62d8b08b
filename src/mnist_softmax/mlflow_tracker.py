"""The MLflow side of tracking: the only module that imports mlflow (see tracking.py)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from mnist_softmax.errors import ExplainedError
from mnist_softmax.tracking import NullRun, project_root, store_uri

MODEL_HASH_TAG = "model_sha256"
MODEL_URI_TAG = "mlflow_model_uri"  # models:/<model_id> of the logged MLflow model
# A run whose training DVC restored from its run-cache for another experiment, whose evaluate or plot then ran:
REUSED_TAG = "dvc_exp_names_reused"  # those experiments' names, comma-separated
REUSED_ARTIFACTS = "dvc_exp_reused"  # their stages' files go to dvc_exp_reused/<experiment>/...
REUSED_FAILED_TAG = "dvc_exp_reused_failed"  # .<experiment>: why its stage failed (the run keeps its status)
# What the pickled model needs to load (the package ships as code_paths): pinned from this environment. Naming them
# skips MLflow's requirement inference, a subprocess that reloads the model (~9 s here).
MODEL_PACKAGES = ("torch", "cloudpickle", "numpy", "tqdm")
HOST_TAG, PID_TAG = "pipeline.host", "pipeline.pid"
END_REASON_TAG = "pipeline.end_reason"
DIGEST_CHARS = 32  # MLflow refuses dataset digests over 36 characters
BATCH = 100  # MLflow's log_batch takes at most 100 params per call


class TrackingError(ExplainedError, RuntimeError):
    """The tracking store cannot be used; raised before any expensive work."""


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialize first use of a SQLite store across processes (parallel queued runs): table creation and
    experiment creation race otherwise (duplicate column; mlflow#10334)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        yield
        return
    db = Path(parsed.path)
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
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return
    db = Path(parsed.path)
    if db.is_file() and db.stat().st_size:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    SqlAlchemyStore(uri, artifact_root)  # creates the tables and the Default experiment


def _check_reachable(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as e:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {e}") from e


def _check_writable(uri: str) -> None:
    """An existing SQLite store must take writes: a read-only file (chattr +i, read-only mount, no permission)
    opens fine and fails only at the first write, after the data is loaded. Probe with a write that is
    rolled back; a busy or locked store is not an error here (MLflow waits for it)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not Path(parsed.path).is_file():
        return
    try:
        con = sqlite3.connect(parsed.path, timeout=20, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE _pipeline_write_probe (x)")  # journaled like any write, then undone
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return
        raise TrackingError(f"the MLflow store {uri} cannot be written ({e}); make {parsed.path} and its"
                            " folder writable, or set MLFLOW_TRACKING_URI to another store") from e


class RunHandle:
    """Logs into one run by id (no global 'active run' needed except for log_model)."""

    artifact_prefix: str | None = None  # set on a run attached for another DVC experiment (see attached_run)

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.artifact_prefix:
            artifact_path = "/".join(filter(None, [self.artifact_prefix, artifact_path]))
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, digest: str, path: str, context: str) -> None:
        """Dataset lineage (the run's Inputs). MLflow caps a digest at 36 characters: callers pass a prefix
        of the full hash, which the run's tags hold."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        dataset = MetaDataset(LocalArtifactDatasetSource(path), name=name, digest=digest[:DIGEST_CHARS])
        self.client.log_inputs(self.run_id, [mlflow.entities.DatasetInput(
            dataset._to_mlflow_entity(), tags=[mlflow.entities.InputTag("mlflow.data.context", context)])])

    def log_pytorch_model(self, model, input_example, name: str = "model") -> None:
        """An MLflow model (pyfunc-loadable): pickle serialization, the fast path for a plain MLP.
        Its URI (models:/<model_id>) goes into the run's tag mlflow_model_uri."""
        import mlflow.pytorch
        from mlflow.models import infer_signature
        with model_eval(model):
            import torch
            with torch.inference_mode():
                output = model(torch.as_tensor(input_example)).numpy()
        info = mlflow.pytorch.log_model(model, name=name, input_example=input_example, run_id=self.run_id,
                                        signature=infer_signature(input_example, output),
                                        serialization_format="pickle", code_paths=[str(Path(__file__).parent)],
                                        pip_requirements=_model_requirements())
        self.set_tags({MODEL_URI_TAG: info.model_uri})

    def set_model_hash(self, model_sha256: str) -> None:
        """Mark the run as the producer of this model file; evaluate and plot look runs up by it."""
        self.set_tags({MODEL_HASH_TAG: model_sha256})

    def end(self, status: str, reason: str | None = None) -> None:
        if reason:
            self.set_tags({END_REASON_TAG: reason[:5000]})
        self.client.set_terminated(self.run_id, status)


def _model_requirements() -> list[str]:
    """`pkg==version` of MODEL_PACKAGES as installed (local labels such as +cu130 dropped); MLflow adds mlflow."""
    from importlib.metadata import version
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in MODEL_PACKAGES]


@contextlib.contextmanager
def model_eval(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Tracker:
    def __init__(self, experiment: str, root: Path | None = None):
        self.root = root or project_root()
        self.uri = store_uri(self.root)
        _check_reachable(self.uri)
        _check_writable(self.uri)
        try:
            with _store_lock(self.uri):
                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    _create_sqlite_store(self.uri, (self.root / "mlruns").as_uri())
                self.client = MlflowClient(self.uri)
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    # Absolute artifact folder at the project root: a queued run's temp copy must not get them.
                    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (self.root / "mlruns").as_uri()
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                else:
                    self.experiment_id = exp.experiment_id
        except Exception as e:
            raise TrackingError(f"cannot use the MLflow store {self.uri}: {e}") from e
        mlflow.set_tracking_uri(self.uri)

    def end_orphaned_runs(self) -> list[str]:
        """Mark FAILED the RUNNING runs whose training process (on this host) no longer exists."""
        ended = []
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            tags = run.data.tags
            if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
                continue
            if not _pid_alive(int(tags[PID_TAG])):
                RunHandle(self.client, run.info.run_id).end(
                    "FAILED", f"process {tags[PID_TAG]} ended without closing the run (killed?)")
                ended.append(run.info.run_id)
        return ended

    @contextlib.contextmanager
    def training_run(self, run_name: str | None, params: dict[str, str], tags: dict[str, str]):
        """A new run for one training; ends FINISHED, KILLED (Ctrl-C/SIGTERM) or FAILED (any exception)."""
        self.end_orphaned_runs()
        tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
        handle = RunHandle(self.client, run.info.run_id)
        try:
            handle.log_params(params)
            yield handle
        except KeyboardInterrupt as e:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            handle.set_tags({END_REASON_TAG: f"interrupted: {str(e) or 'Ctrl-C'}"})
            raise
        except BaseException as e:
            handle.set_tags({END_REASON_TAG: f"{type(e).__name__}: {e}"[:5000]})
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        else:
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))

    def find_model_run(self, model_sha256: str):
        """The run that produced a model file: same model hash; this DVC experiment's run first, else newest."""
        runs = self.client.search_runs([self.experiment_id], f"tags.{MODEL_HASH_TAG} = '{model_sha256}'",
                                       order_by=["attributes.start_time DESC"], max_results=50)
        exp_name = os.environ.get("DVC_EXP_NAME")
        for run in runs:
            if exp_name and run.data.tags.get("dvc_exp_name") == exp_name:
                return run
        return runs[0] if runs else None

    @contextlib.contextmanager
    def attached_run(self, model_sha256: str, log=print):
        """Yield a handle on the run that produced the model (a NullRun if no run recorded it).
        If the stage fails, that run is marked FAILED."""
        run = self.find_model_run(model_sha256)
        if run is None:
            log(f"mlflow: no run in {self.uri} produced model {model_sha256[:12]} (trained before tracking,"
                " or restored by DVC from its run-cache into a new store); results not logged")
            yield NullRun()
            return
        handle = RunHandle(self.client, run.info.run_id)
        exp_name = os.environ.get("DVC_EXP_NAME")
        reused = bool(exp_name and run.data.tags.get("dvc_exp_name") != exp_name)
        if reused:
            # DVC restored this training from its run-cache for another experiment: say so on the run, and
            # keep that experiment's files apart (its plot params may differ from the run's own).
            seen = [n for n in run.data.tags.get(REUSED_TAG, "").split(",") if n]
            if exp_name not in seen:
                handle.set_tags({REUSED_TAG: ",".join(seen + [exp_name])})
            handle.artifact_prefix = f"{REUSED_ARTIFACTS}/{exp_name}"
        try:
            yield handle
        except BaseException as e:
            reason = f"{os.environ.get('DVC_STAGE', 'stage')} failed: {type(e).__name__}: {e}"
            if reused:  # the run itself (its training) is fine: only this other experiment's stage failed
                handle.set_tags({f"{REUSED_FAILED_TAG}.{exp_name}": reason[:5000]})
            else:
                handle.end("FAILED", reason)
            raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


