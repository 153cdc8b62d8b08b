"""The MLflow side of tracking: the only module that imports mlflow (see tracking.py).

A run belongs to one training. Each stage that touches it records the outcome of its latest attempt in the
tag `pipeline.stage.<stage>` (RUNNING, FINISHED, FAILED or KILLED; the reason in `.reason`), and the run's
status follows them: FAILED if a stage's latest attempt failed, else KILLED if one was interrupted, else
FINISHED. No run stays RUNNING once its process is gone:
- each stage starts a guard process (run_guard.py, in its own session) that records the stage as FAILED
  when the stage's process ends without having done so: kill -9 of it or of its process group, the OOM killer;
- a training run carries its process's identity (boot id, pid namespace, pid and start time) and a
  heartbeat tag renewed every HEARTBEAT_S; every stage that opens the store ends the RUNNING runs whose
  process is gone on this machine, or whose heartbeat is older than STALE_S (a machine that went down).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_softmax.errors import ExplainedError
from mnist_softmax.fileio import explained_disk_full, read_json, write_json_atomic
from mnist_softmax.tracking import (STUDY_TAG, TRIAL_TAG, NullRun, process_identity, process_start, project_root,
                                    store_uri)

MODEL_HASH_TAG = "model_sha256"
MODEL_URI_TAG = "mlflow_model_uri"  # models:/<model_id> of the logged MLflow model
# A run whose training DVC restored from its run-cache for another experiment, whose evaluate or plot then ran:
REUSED_TAG = "dvc_exp_names_reused"  # those experiments' names, comma-separated
REUSED_ARTIFACTS = "dvc_exp_reused"  # their stages' files go to dvc_exp_reused/<experiment>/...; their
# stages' outcomes to the tags dvc_exp_reused.<experiment>.<stage> (the run's own status is the training's)
AMBIGUOUS_TAG = "pipeline.model_runs"  # on a run evaluate/plot opened: the runs that all produced its model
EVALUATED_HASH_TAG = "model_sha256_evaluated"  # on such a run: the model it evaluated
END_REASON_TAG = "pipeline.end_reason"
OWNER_TAG = "pipeline.owner_stage"  # the stage whose process keeps the run RUNNING
HEARTBEAT_TAG = "pipeline.heartbeat"  # ms since the epoch, renewed while the training runs
HEARTBEAT_S = 60
STALE_S = 600  # no heartbeat for this long: the process is gone
# What the logged model's code needs besides mlflow (the package ships as its code). Naming them skips
# MLflow's requirement inference, a subprocess that reloads the model.
MODEL_PACKAGES = ("torch", "numpy", "safetensors", "tqdm")
DIGEST_CHARS = 32  # MLflow refuses dataset digests over 36 characters
BATCH = 100  # MLflow's log_batch takes at most 100 params per call
SERVED_MODEL = Path(__file__).with_name("served_model.py")  # the logged model's code


class TrackingError(ExplainedError, RuntimeError):
    """The tracking store cannot be used; raised before any expensive work."""


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store URI (store_uri makes them absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if urlparse(uri).scheme == "sqlite" else None


def stage_tag(stage: str) -> str:
    return f"pipeline.stage.{stage}"


def derived_status(tags: dict[str, str]) -> str:
    """The run's status from its stages' latest attempts (a stage still running does not count)."""
    ended = {tags.get(stage_tag(s)) for s in ("train", "evaluate", "plot")}
    return next((s for s in ("FAILED", "KILLED") if s in ended), "FINISHED")


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialize first use of a SQLite store across processes (parallel queued runs): table creation and
    experiment creation race otherwise (duplicate column; mlflow#10334)."""
    db = _sqlite_file(uri)
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
    db = _sqlite_file(uri)
    if db is None or db.is_file() and db.stat().st_size:
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
    db = _sqlite_file(uri)
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
        raise TrackingError(f"the MLflow store {uri} cannot be written ({e}); make {db} and its"
                            " folder writable, or set MLFLOW_TRACKING_URI to another store") from e


class RunHandle:
    """Logs into one run by id; `artifact_prefix` is set on a run attached for another DVC experiment."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_prefix: str | None = None):
        self.client, self.run_id, self.artifact_prefix = client, run_id, artifact_prefix
        self.model_sha256: str | None = None

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.artifact_prefix:
            artifact_path = "/".join(filter(None, [self.artifact_prefix, artifact_path]))
        with explained_disk_full(f"the run's artifact {artifact_path}/{Path(path).name}"):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, digest: str, path: str, context: str) -> None:
        """Dataset lineage (the run's Inputs). MLflow caps a digest at 36 characters: callers pass a prefix
        of the full hash, which the run's tags hold."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        dataset = MetaDataset(LocalArtifactDatasetSource(path), name=name, digest=digest[:DIGEST_CHARS])
        self.client.log_inputs(self.run_id, [mlflow.entities.DatasetInput(
            dataset._to_mlflow_entity(), tags=[mlflow.entities.InputTag("mlflow.data.context", context)])])

    def log_model(self, model, arch: dict, input_example) -> None:
        """The MLflow model, as code (served_model.py) with the weights in safetensors: loading it unpickles
        nothing. pyfunc-loadable; its URI (models:/<model_id>) goes into the run's tag mlflow_model_uri.
        Needs the run active (the training's run is)."""
        import tempfile

        import torch
        from mlflow.models import infer_signature
        from safetensors.torch import save_file
        with tempfile.TemporaryDirectory() as tmp:
            weights, architecture = Path(tmp) / "model.safetensors", Path(tmp) / "architecture.json"
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
            architecture.write_text(json.dumps(arch))
            with torch.inference_mode():
                was_training = model.training
                output = model.eval()(torch.as_tensor(input_example)).numpy()
                model.train(was_training)
            with explained_disk_full("the run's MLflow model"):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(SERVED_MODEL), code_paths=[str(Path(__file__).parent)],
                    artifacts={"weights": str(weights), "architecture": str(architecture)},
                    signature=infer_signature(input_example, output), input_example=input_example,
                    pip_requirements=_model_requirements())
        self.set_tags({MODEL_URI_TAG: info.model_uri})

    def set_model_hash(self, model_sha256: str) -> None:
        """Mark the run as the producer of this model file; evaluate and plot look runs up by it."""
        self.set_tags({MODEL_HASH_TAG: model_sha256})
        self.model_sha256 = model_sha256


def _model_requirements() -> list[str]:
    """`pkg==version` of MODEL_PACKAGES as installed (local labels such as +cu130 dropped); MLflow adds mlflow."""
    from importlib.metadata import version
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in MODEL_PACKAGES]


def serve_classifier() -> None:
    """What served_model.py runs when MLflow loads the model: hand MLflow the model object (models-from-code).
    The served model gives logits for a batch of normalized 784-pixel rows."""

    class Classifier(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from safetensors.torch import load_file
            from mnist_softmax.model import build
            self.model = build(read_json(context.artifacts["architecture"]))
            self.model.load_state_dict(load_file(context.artifacts["weights"]))
            self.model.eval()

        def predict(self, context, model_input, params=None):
            import numpy as np
            import torch
            with torch.inference_mode():
                return self.model(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()

    mlflow.models.set_model(Classifier())


@contextlib.contextmanager
def _heartbeat(client: MlflowClient, run_id: str):
    """Renew the run's heartbeat tag every HEARTBEAT_S while the block runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is only a late one
                client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time() * 1000)))
    thread = threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@contextlib.contextmanager
def _guarded(uri: str, run_id: str, stage: str, reused_as: str = ""):
    """Run the block with a guard process watching this one (see the module's docstring); it is told when
    the block has recorded the stage's end, and does nothing then."""
    package_parent = str(Path(__file__).resolve().parents[1])  # the guard runs the code this stage runs
    guard = subprocess.Popen([sys.executable, "-m", "mnist_softmax.run_guard", uri, run_id, stage,
                              str(os.getpid()), reused_as], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": package_parent})
    try:
        yield
        guard.stdin.write(b"done\n")
    finally:
        with contextlib.suppress(OSError):
            guard.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(5)


class Tracker:
    def __init__(self, experiment: str, root: Path | None = None, run_file: str | Path | None = None):
        self.root = root or project_root()
        self.uri = store_uri(self.root)
        self.run_file = Path(run_file) if run_file else None
        _check_reachable(self.uri)
        _check_writable(self.uri)
        try:
            with _store_lock(self.uri):
                # A SQLite store's artifacts go to mlruns/ beside it, by absolute path: MLflow's default is
                # ./mlruns of whoever creates the experiment, for a queued run a temp copy DVC deletes.
                db = _sqlite_file(self.uri)
                artifacts = (db.parent / "mlruns").as_uri() if db else None
                if artifacts:
                    _create_sqlite_store(self.uri, artifacts)
                self.client = MlflowClient(self.uri)
                self.experiment_id = self._experiment(experiment, artifacts)
        except MlflowException as e:
            raise TrackingError(f"cannot use the MLflow store {self.uri}: {e.message}") from e
        except Exception as e:
            raise TrackingError(f"cannot use the MLflow store {self.uri}: {e}") from e
        mlflow.set_tracking_uri(self.uri)
        self.end_orphaned_runs()

    def _experiment(self, name: str, location: str | None) -> str:
        """The experiment's id, creating it if need be. Creators racing on a fresh server all but one get
        RESOURCE_ALREADY_EXISTS: those read the winner's."""
        for _ in range(5):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            time.sleep(0.2)
        raise TrackingError(f"experiment {name!r} neither exists nor can be created in {self.uri}")

    # ---- runs whose process is gone --------------------------------------------------------------------

    def end_orphaned_runs(self) -> list[str]:
        """Mark FAILED the RUNNING runs whose process is gone: by its identity on this machine, else by a
        heartbeat older than STALE_S."""
        me, now, ended = process_identity(), time.time(), []
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            tags = run.data.tags
            pid = tags.get("pipeline.pid", "")
            same_machine = all(tags.get(k) == me[k] for k in ("pipeline.boot_id", "pipeline.pid_namespace")) \
                and tags.get("pipeline.boot_id") and pid.isdigit()
            beat = tags.get(HEARTBEAT_TAG, "")
            if same_machine:
                if process_start(int(pid)) == tags.get("pipeline.pid_start"):
                    continue
                reason = f"process {pid} on {tags.get('pipeline.host')} ended without closing the run (killed?)"
            elif beat.isdigit() and now - int(beat) / 1000 > STALE_S:
                reason = (f"no heartbeat from process {pid} on {tags.get('pipeline.host')} for"
                          f" {int(now - int(beat) / 1000)} s: its process is gone")
            else:
                continue
            end_stage(self.client, run.info.run_id, tags.get(OWNER_TAG, "train"), "FAILED", reason)
            ended.append(run.info.run_id)
        return ended

    @contextlib.contextmanager
    def _stage(self, run_id: str, stage: str, reused_as: str = "", on_success=None):
        """The block is one attempt of `stage` on the run: its outcome recorded however it ends."""
        with _guarded(self.uri, run_id, stage, reused_as):
            RunHandle(self.client, run_id).set_tags({_stage_key(stage, reused_as): "RUNNING"})
            try:
                yield
            except KeyboardInterrupt as e:
                end_stage(self.client, run_id, stage, "KILLED", f"interrupted: {str(e) or 'Ctrl-C'}", reused_as)
                raise
            except BaseException as e:
                end_stage(self.client, run_id, stage, "FAILED", f"{type(e).__name__}: {e}", reused_as)
                raise
            else:
                if on_success:
                    on_success()
                end_stage(self.client, run_id, stage, "FINISHED", "", reused_as)

    # ---- the training's run ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def training_run(self, run_name: str | None, params: dict[str, str], tags: dict[str, str]):
        """A new run for one training; the train stage's outcome ends it (see the module's docstring)."""
        tags = {**tags, **process_identity(), OWNER_TAG: "train", stage_tag("train"): "RUNNING",
                HEARTBEAT_TAG: str(int(time.time() * 1000))}
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
        handle = RunHandle(self.client, run.info.run_id)
        self._write_run_file(run.info.run_id, None, reused=False)
        try:
            with self._stage(handle.run_id, "train",
                             on_success=lambda: self._write_run_file(handle.run_id, handle.model_sha256, False)), \
                    _heartbeat(self.client, handle.run_id):
                handle.log_params(params)
                yield handle
        finally:
            # the run is ended already (end_stage): this only clears the active-run state, keeping its status
            mlflow.end_run(self.client.get_run(handle.run_id).info.status)

    # ---- evaluate's and plot's run ---------------------------------------------------------------------

    def _write_run_file(self, run_id: str, model_sha256: str | None, reused: bool) -> None:
        if self.run_file:
            write_json_atomic(self.run_file, {"run_id": run_id, "model_sha256": model_sha256, "reused": reused,
                                              "store": self.uri, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")})

    def _linked_run(self, model_sha256: str) -> tuple[str, bool] | None:
        """The run the run file names, if it produced this model in this store for this experiment."""
        try:
            link = read_json(self.run_file) if self.run_file else None
        except (OSError, ValueError):
            return None
        expected = {"model_sha256": model_sha256, "store": self.uri, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
        if not isinstance(link, dict) or any(link.get(k) != v for k, v in expected.items()):
            return None
        try:
            self.client.get_run(link["run_id"])
        except MlflowException:
            return None
        return link["run_id"], bool(link.get("reused"))

    def _find_run(self, model_sha256: str, stage: str, log) -> tuple[str, bool] | None:
        """(run id, reused) for this model: the run file's run, else the one run that produced it (reused),
        else, when several did, a new run that says so; None when no run did."""
        linked = self._linked_run(model_sha256)
        if linked:
            return linked
        runs = self.client.search_runs([self.experiment_id], f"tags.{MODEL_HASH_TAG} = '{model_sha256}'",
                                       order_by=["attributes.start_time ASC"], max_results=100)
        if not runs:
            log(f"mlflow: no run in {self.uri} produced model {model_sha256[:12]} (trained before tracking,"
                " or restored by DVC from its run-cache into a new store); results not logged")
            return None
        if len(runs) == 1:
            found = runs[0].info.run_id, True
        else:
            ids = ", ".join(r.info.run_id for r in runs)
            log(f"mlflow: {len(runs)} runs produced model {model_sha256[:12]} ({ids}) and none was made in this"
                f" working copy: {stage}'s results go to a new run, which names them (tag {AMBIGUOUS_TAG})")
            run = self.client.create_run(self.experiment_id, run_name=os.environ.get("DVC_EXP_NAME"), tags={
                **process_identity(), OWNER_TAG: stage, AMBIGUOUS_TAG: ids, EVALUATED_HASH_TAG: model_sha256,
                "mlflow.note.content": f"Evaluates model {model_sha256}, which runs {ids} all produced."})
            found = run.info.run_id, False
        self._write_run_file(found[0], model_sha256, reused=found[1])
        return found

    @contextlib.contextmanager
    def attached_run(self, model_sha256: str, stage: str, log=print):
        """A handle on the run evaluate or plot logs into (a NullRun if no run produced the model). A run
        trained for another DVC experiment (restored from the run-cache) gets this experiment's files under
        dvc_exp_reused/<experiment>/, and its status stays the training's."""
        found = self._find_run(model_sha256, stage, log)
        if found is None:
            yield NullRun()
            return
        run_id, reused = found
        reused_as = (os.environ.get("DVC_EXP_NAME") or "workspace") if reused else ""
        handle = RunHandle(self.client, run_id, f"{REUSED_ARTIFACTS}/{reused_as}" if reused else None)
        if reused:
            seen = [n for n in self.client.get_run(run_id).data.tags.get(REUSED_TAG, "").split(",") if n]
            if reused_as not in seen:
                handle.set_tags({REUSED_TAG: ",".join(seen + [reused_as])})
        with self._stage(run_id, stage, reused_as):
            yield handle


def _stage_key(stage: str, reused_as: str = "") -> str:
    return f"{REUSED_ARTIFACTS}.{reused_as}.{stage}" if reused_as else stage_tag(stage)


def end_stage(client: MlflowClient, run_id: str, stage: str, status: str, reason: str = "",
              reused_as: str = "") -> None:
    """Record a stage attempt's outcome, and the run's status that follows (not for a reused run)."""
    key = _stage_key(stage, reused_as)
    tags = {key: status, f"{key}.reason": reason}
    if not reused_as and status != "FINISHED":
        tags[END_REASON_TAG] = reason if stage == "train" else f"{stage}: {reason}"
    RunHandle(client, run_id).set_tags(tags)
    if not reused_as:
        client.set_terminated(run_id, derived_status(client.get_run(run_id).data.tags))


def end_abandoned_stage(uri: str, run_id: str, stage: str, pid: str, reused_as: str) -> None:
    """What run_guard.py does once the stage's process `pid` is gone: if the stage did not record its end,
    record it FAILED."""
    client = MlflowClient(uri)
    if client.get_run(run_id).data.tags.get(_stage_key(stage, reused_as)) == "RUNNING":
        end_stage(client, run_id, stage, "FAILED",
                  f"process {pid} on {socket.gethostname()} ended without closing the run (killed?)", reused_as)


def promote(experiment: str, dvc_exp_name: str, model_name: str, alias: str) -> tuple[str, str]:
    """Register the MLflow model of the newest FINISHED run of DVC experiment `dvc_exp_name` (its run name) as
    a new version of `model_name`, and point `alias` at it. (version, run id)."""
    uri = store_uri(project_root())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"attributes.run_name = '{dvc_exp_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or MODEL_URI_TAG not in runs[0].data.tags:
        raise TrackingError(f"no FINISHED run of {dvc_exp_name!r} with a logged model in experiment"
                            f" {experiment!r} of {uri}")
    run = runs[0]
    with contextlib.suppress(MlflowException):  # it exists already
        client.create_registered_model(model_name)
    version = mlflow.register_model(run.data.tags[MODEL_URI_TAG], model_name).version
    client.set_registered_model_alias(model_name, alias, version)
    return str(version), run.info.run_id


# ---- sweeps (sweep.py): one parent run per study, its trials' runs its children ---------------------------

BEST_TAG = "sweep.best"


def _project_client() -> MlflowClient:
    """A client of the store this project's stages use (MLFLOW_TRACKING_URI, else its mlflow.db)."""
    return MlflowClient(store_uri(project_root()))


def open_study_run(experiment: str, study: str, budget: int) -> str:
    """The study's parent run (RUNNING while the study goes on; its heartbeat renewed by the workers)."""
    tracker = Tracker(experiment)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"study {study}", tags={
        STUDY_TAG: study, "sweep.budget": str(budget), OWNER_TAG: "sweep", HEARTBEAT_TAG: str(int(time.time() * 1000)),
        "mlflow.note.content": f"Optuna study {study}: its trials are this run's children."})
    return run.info.run_id


@contextlib.contextmanager
def study_heartbeat(parent_run: str):
    with _heartbeat(_project_client(), parent_run):
        yield


def _trial_runs(client: MlflowClient, experiment_id: str, study: str, trial: int | None = None) -> list:
    where = f"tags.`{STUDY_TAG}` = '{study}'" + (f" and tags.`{TRIAL_TAG}` = '{trial}'" if trial is not None else "")
    return [r for r in client.search_runs([experiment_id], where, max_results=5000) if TRIAL_TAG in r.data.tags]


def mark_best(parent_run: str, study: str, trial: int, value: float) -> None:
    """Tag the best trial's run sweep.best=true (the others false) and the study's run with the best."""
    client = _project_client()
    parent = client.get_run(parent_run)
    runs = _trial_runs(client, parent.info.experiment_id, study)
    best = [r.info.run_id for r in runs if r.data.tags[TRIAL_TAG] == str(trial)]
    for run in runs:
        flag = "true" if run.info.run_id in best else "false"
        if run.data.tags.get(BEST_TAG) != flag:
            client.set_tag(run.info.run_id, BEST_TAG, flag)
    tags = {"sweep.best_trial": str(trial), "sweep.best_value": repr(value)}
    if best:
        tags["sweep.best_run"] = best[0]
    RunHandle(client, parent_run).set_tags(tags)


def finish_study_run(parent_run: str, done: int) -> None:
    client = _project_client()
    RunHandle(client, parent_run).set_tags({"sweep.trials_done": str(done)})
    client.set_terminated(parent_run, "FINISHED")


def end_trial_runs(study: str, trial: int, reason: str) -> None:
    """A trial Optuna failed as stale: its runs still RUNNING end FAILED with the reason."""
    client = _project_client()
    for exp in client.search_experiments():
        for run in _trial_runs(client, exp.experiment_id, study, trial):
            if run.info.status == "RUNNING":
                end_stage(client, run.info.run_id, run.data.tags.get(OWNER_TAG, "train"), "FAILED", reason)
