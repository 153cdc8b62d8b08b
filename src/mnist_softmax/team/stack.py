"""The team's services on one machine: PostgreSQL (MLflow's runs and users, Optuna's studies), an
S3-compatible object store (MLflow's artifacts and the DVC remote), and the MLflow tracking server on them,
with basic auth and serving the artifacts itself (clients need no bucket credentials).

    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m mnist_softmax.team.stack --dir .team \\
        --writer alice:PASSWORD --reader bob:PASSWORD

Everything listens on 127.0.0.1 unless --host says otherwise. PostgreSQL keeps its data in DIR/postgres
(run as the `postgres` user when started as root: PostgreSQL refuses to run as root). Without
--s3-endpoint the object store is moto's S3 server, which keeps objects in memory: for trying the stack out;
give a real store (MinIO, S3) for anything to keep. Ctrl-C stops all of it. docs/team.md has the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from mnist_softmax.core.params import load_params
from mnist_softmax.team.services import Postgres, StackError, free_port, secret, wait_for

ARTIFACT_BUCKET, DVC_BUCKET = "mlflow-artifacts", "dvc"
AUTH_CACHE_S = 60


@dataclasses.dataclass
class Stack:
    """PostgreSQL, an object store and the MLflow server, started in this order and stopped in reverse."""

    folder: Path
    admin_password: str
    host: str = "127.0.0.1"
    mlflow_port: int = 0
    s3_endpoint: str | None = None  # an existing S3-compatible store; None: start moto's
    default_permission: str = "READ"
    workers: int = 2
    procs: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.folder = Path(self.folder).resolve()
        self.mlflow_port = self.mlflow_port or free_port(self.host)
        self.url = f"http://{self.host}:{self.mlflow_port}"
        self.postgres = Postgres(self.folder / "postgres", self.host, free_port(self.host))

    # ---- the object store ------------------------------------------------------------------------------

    def s3_env(self) -> dict[str, str]:
        """What an S3 client of this stack's store needs (the MLflow server, `dvc push`)."""
        keys = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
        if not self.s3_endpoint or not keys:  # moto takes any key
            keys = {"AWS_ACCESS_KEY_ID": "stack", "AWS_SECRET_ACCESS_KEY": "stack-secret"}
        assert self.s3_endpoint is not None  # set by _start_s3, before anything asks for the env
        return {
            **keys,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
        }

    def _start_s3(self) -> None:
        if self.s3_endpoint is None:
            port = free_port(self.host)
            log = self.folder / "s3.log"
            proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("moto_server")),
                    "-H",
                    self.host,
                    "-p",
                    str(port),
                ],
                stdout=open(log, "w"),  # noqa: SIM115 (the service writes it for its whole life)
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            self.s3_endpoint = f"http://{self.host}:{port}"
            wait_for(f"{self.s3_endpoint}/moto-api/", proc, "the S3 server (moto)", log)
        import boto3

        env = self.s3_env()
        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in {ARTIFACT_BUCKET, DVC_BUCKET} - existing:
            s3.create_bucket(Bucket=bucket)

    # ---- the MLflow server -----------------------------------------------------------------------------

    def _start_mlflow(self) -> None:
        backend = self.postgres.uri("mlflow")
        log = self.folder / "mlflow.log"
        upgrade = subprocess.run(
            [str(Path(sys.executable).with_name("mlflow")), "db", "upgrade", backend],
            capture_output=True,
            text=True,
        )  # the tables, once, before the workers start
        if upgrade.returncode != 0:
            raise StackError(f"mlflow db upgrade failed: {upgrade.stderr.strip()[-2000:]}")
        config = self.folder / "basic_auth.ini"
        config.write_text(
            f"[mlflow]\ndefault_permission = {self.default_permission}\n"
            f"database_uri = {self.postgres.uri('mlflow_auth')}\nadmin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Each request's password check is a deliberate slow hash: keep a good one for a minute (a
            # changed password may still work that long on the other worker).
            f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n"
        )
        config.chmod(0o600)
        env = {
            **os.environ,
            **self.s3_env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret(self.folder / "flask.secret"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI jobs here: no job worker processes
        }
        hosts = f"{self.host},{self.host}:{self.mlflow_port},localhost,localhost:{self.mlflow_port}"
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                backend,
                "--serve-artifacts",
                "--artifacts-destination",
                f"s3://{ARTIFACT_BUCKET}",
                "--host",
                self.host,
                "--port",
                str(self.mlflow_port),
                "--workers",
                str(self.workers),
                "--app-name",
                "basic-auth",
                "--allowed-hosts",
                hosts,
                "--cors-allowed-origins",
                self.url,
            ],
            env=env,
            stdout=open(log, "w"),  # noqa: SIM115 (the service writes it for its whole life)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        wait_for(f"{self.url}/health", proc, "the MLflow server", log)

    def api(
        self,
        method: str,
        endpoint: str,
        body: dict | None = None,
        user: str = "admin",
        password: str | None = None,
    ) -> dict:
        """A call of the MLflow server's REST API as `user` (admin by default)."""
        token = b64encode(f"{user}:{password or self.admin_password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}{endpoint}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text else {}

    def add_user(self, name: str, password: str) -> None:
        try:
            self.api("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
        except urllib.error.HTTPError as e:
            if e.code != 400:  # 400: the user exists already (a restarted stack)
                raise

    def grant(self, experiment: str, name: str, permission: str) -> None:
        """Create the experiment if need be (as admin) and give `name` that permission on it."""
        try:
            exp_id = self.api("POST", "/api/2.0/mlflow/experiments/create", {"name": experiment})["experiment_id"]
        except urllib.error.HTTPError:
            exp_id = self.api("GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")[
                "experiment"
            ]["experiment_id"]
        self.api(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": name,
                "resource_type": "experiment",
                "resource_id": exp_id,
                "permission": permission,
            },
        )

    # ---- the whole -------------------------------------------------------------------------------------

    def start(self) -> Stack:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres.start()
            self._start_s3()
            self._start_mlflow()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()
        self.postgres.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, user: str, password: str) -> dict[str, str]:
        """What the pipeline (every stage, `dvc exp run`, queued experiments) needs to use this stack."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
        }


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not (name and sep and password):
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=".team", help="state folder: PostgreSQL's data, logs, secrets")
    ap.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    ap.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    ap.add_argument(
        "--s3-endpoint",
        help="an S3-compatible store to use instead of starting moto's"
        " (its keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    )
    ap.add_argument(
        "--experiment",
        help="the experiment writers get EDIT on (default: params.yaml's tracking.experiment)",
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--writer", type=_user, action="append", default=[], help="NAME:PASSWORD, may log runs")
    ap.add_argument("--reader", type=_user, action="append", default=[], help="NAME:PASSWORD, may only read")
    args = ap.parse_args(argv)
    experiment = args.experiment or load_params(args.params).tracking.experiment
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
    if not password:
        raise SystemExit("stack: set MLFLOW_AUTH_ADMIN_PASSWORD, the password of the server's admin user")
    stack = Stack(
        Path(args.dir),
        password,
        host=args.host,
        mlflow_port=args.port,
        s3_endpoint=args.s3_endpoint,
    )
    with stack:
        for name, pw in args.writer + args.reader:
            stack.add_user(name, pw)
        for name, _ in args.writer:
            stack.grant(experiment, name, "EDIT")
        for name, _ in args.reader:
            stack.grant(experiment, name, "READ")
        s3 = stack.s3_env()
        print(
            f"MLflow server: {stack.url} (admin: admin / $MLFLOW_AUTH_ADMIN_PASSWORD)\n"
            f"object store: {stack.s3_endpoint} (buckets {ARTIFACT_BUCKET}, {DVC_BUCKET})\n"
            f"sweeps' storage: OPTUNA_STORAGE={stack.postgres.uri('optuna')}\n\n"
            f"the pipeline, as a writer:\n"
            f"  export MLFLOW_TRACKING_URI={stack.url} MLFLOW_TRACKING_USERNAME=NAME MLFLOW_TRACKING_PASSWORD=...\n"
            f"the DVC remote:\n"
            f"  dvc remote add -d team s3://{DVC_BUCKET} && dvc remote modify team endpointurl {stack.s3_endpoint}\n"
            f"  export AWS_ACCESS_KEY_ID={s3['AWS_ACCESS_KEY_ID']} AWS_SECRET_ACCESS_KEY=...\n\n"
            "Ctrl-C stops the stack.",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in stack.procs):
                time.sleep(1)


if __name__ == "__main__":
    main()
