"""The team's services on one machine: PostgreSQL (MLflow's runs and users, Optuna's studies), the MLflow
tracking server on it with basic auth, serving the artifacts itself (clients need no store credentials).

    export MLFLOW_AUTH_ADMIN_PASSWORD=...            # the server's admin; users' passwords in a 0600 file:
    python -m mnist_softmax.team.stack --dir .team --passwords team.passwords --writer alice --reader bob

No secret goes on a command line: the admin's password comes from the environment, the users' from
`--passwords FILE` (NAME:PASSWORD lines, readable by its owner only; `-` reads them from stdin), and the
services get theirs through the environment or 0600 files in the state folder (0700). MLflow's artifacts
and the DVC remote are folders in it, reached through the server's basic auth (artifacts) or an account
on this machine (the DVC remote: a path here, `ssh://` elsewhere): no store that answers without
credentials. `--s3-endpoint` uses an S3 store that checks keys instead; `--demo-s3` starts moto's S3
server, which checks nothing and holds everything in memory: for a throwaway demo only.

Ctrl-C, SIGTERM or SIGHUP stops all of it; after a kill -9 its watchdog stops the services, and a start
finds any a killed stack left running in its folder and stops them first. docs/team.md has the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

from mnist_softmax.core.params import load_params
from mnist_softmax.errors import ExplainedError
from mnist_softmax.team.services import (
    LOCAL,
    WATCHDOG,
    Postgres,
    ServiceRecord,
    StackError,
    check_port_free,
    free_port,
    identity,
    listens,
    postgres_user,
    private_folder,
    private_log,
    secret,
    stop_group,
    wait_for,
    write_secret,
)

ARTIFACT_BUCKET, DVC_BUCKET = "mlflow-artifacts", "dvc"
AUTH_CACHE_S = 60
ADMIN = "admin"

# MLflow's own checks of a new user, run before anything starts (only tracking may import mlflow here).
CHECK_USERS = """
import json, sys
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_password, _validate_username
admin, users = json.load(sys.stdin)
try:
    _validate_password(admin)
except MlflowException as e:
    print(f"MLFLOW_AUTH_ADMIN_PASSWORD: MLflow refuses it: {e.message}")
for name, password in users:
    try:
        _validate_username(name)
        _validate_password(password)
    except MlflowException as e:
        print(f"user {name!r}: MLflow refuses it: {e.message}")
"""
UPGRADE_DB = "import os; from mlflow.cli import cli; cli(['db', 'upgrade', os.environ['MLFLOW_BACKEND_STORE_URI']])"


class ApiError(StackError):
    """The MLflow server refused a call; `code` is the HTTP status, `error_code` MLflow's."""

    def __init__(self, message: str, code: int, error_code: str):
        super().__init__(message)
        self.code, self.error_code = code, error_code


@dataclasses.dataclass
class Stack:
    """PostgreSQL, an object store (if any) and the MLflow server, started in this order and stopped in
    reverse."""

    folder: Path
    admin_password: str
    host: str = "127.0.0.1"
    mlflow_port: int = 0
    s3_endpoint: str | None = None  # an S3 store that checks keys (from AWS_ACCESS_KEY_ID/...SECRET_ACCESS_KEY)
    demo_s3: bool = False  # start moto's S3 server, which checks no credentials
    default_permission: str = "READ"
    workers: int = 2
    postgres_port: int = 0  # 0: the one of the last start in this folder, else a free one
    say: Callable[[str], None] = print  # where the stack's notices go
    procs: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.folder = Path(self.folder).resolve()
        self.mlflow_port = self.mlflow_port or free_port(self.host)
        self.url = f"http://{self.host}:{self.mlflow_port}"
        port_file = self.folder / "postgres.port"
        if not self.postgres_port and port_file.exists():
            self.postgres_port = int(port_file.read_text())
        # PostgreSQL stays on loopback whatever --host says: remote workers come through an SSH tunnel.
        self.postgres = Postgres(self.folder / "postgres", "127.0.0.1", self.postgres_port or free_port())
        self.record = ServiceRecord(self.folder / "services.json")
        self.groups: dict[str, list] = {}  # name -> [process group id, its leader's start time]
        self.watchdog: subprocess.Popen | None = None
        self.postmaster: list | None = None

    @property
    def artifacts(self) -> str:
        return f"s3://{ARTIFACT_BUCKET}" if self.s3_endpoint or self.demo_s3 else str(self.folder / "artifacts")

    @property
    def dvc_remote(self) -> str:
        """The DVC remote's URL on this machine (other machines: ssh:// to this path, see docs/team.md)."""
        return f"s3://{DVC_BUCKET}" if self.s3_endpoint or self.demo_s3 else str(self.folder / "dvc")

    def _started(self, name: str, proc: subprocess.Popen) -> None:
        self.procs.append(proc)
        self.groups[name] = identity(proc.pid)  # its own session: the process group's id is its pid
        self.record.save(self.groups, self.watchdog.pid if self.watchdog else None)

    def _start_watchdog(self) -> None:
        """A process that outlives a kill -9 of the stack: when its stdin (a pipe from the stack) closes
        without a word, the stack is gone and it stops the services and PostgreSQL."""
        code = str(Path(__file__).resolve().parents[2])  # the watchdog runs the code this stack runs
        path = os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path}  # pg_ctl, runuser; none of our secrets
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(self.folder)],
            stdin=subprocess.PIPE,
            stdout=private_log(self.folder / "watchdog.log"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # neither Ctrl-C nor the terminal's SIGHUP reach it
        )
        self.record.save(self.groups, self.watchdog.pid)

    def dead(self) -> str | None:
        """Which service has ended on its own, if one has."""
        for name, (pid, _start) in self.groups.items():
            code = next((p.poll() for p in self.procs if p.pid == pid), None)
            if code is not None:
                return f"{name} exited (exit code {code}); its log is in {self.folder}"
        if self.postmaster and self.postgres.pid() != self.postmaster:
            return f"PostgreSQL exited; its log: {self.postgres.folder / 'postgres.log'}"
        return None

    # ---- the object store ------------------------------------------------------------------------------

    def s3_env(self) -> dict[str, str]:
        """What an S3 client of this stack's store needs (the MLflow server, `dvc push`); {} without one."""
        if not self.s3_endpoint:
            return {}
        if self.demo_s3:  # moto takes any key
            keys = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret"}
        else:
            keys = {k: os.environ.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        return {**keys, "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint}

    def _s3(self, signed: bool = True):
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        env = self.s3_env()
        config = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15)
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=config if signed else config.merge(Config(signature_version=UNSIGNED)),
        )

    def _check_store(self) -> None:
        """An S3 store that answers without credentials lets anyone who reaches it read, overwrite (the
        logged model's code runs when a model is loaded) and delete: refused."""
        from botocore.exceptions import BotoCoreError, ClientError

        env = self.s3_env()
        if not (env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]):
            raise StackError("--s3-endpoint: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the store's keys")
        anonymous = self._s3(signed=False)
        probe = ".mnist-softmax-stack-check"  # an empty object: removed again if an anonymous write lands
        requests: list[tuple[str, Callable, dict]] = [("ListBuckets", anonymous.list_buckets, {})]
        for bucket in (ARTIFACT_BUCKET, DVC_BUCKET):
            requests += [
                (f"HeadBucket {bucket}", anonymous.head_bucket, {"Bucket": bucket}),
                (f"ListObjects {bucket}", anonymous.list_objects_v2, {"Bucket": bucket, "MaxKeys": 1}),
                (f"PutObject {bucket}", anonymous.put_object, {"Bucket": bucket, "Key": probe, "Body": b""}),
            ]
        for what, request, kwargs in requests:
            try:
                request(**kwargs)
            except ClientError:
                continue  # refused without credentials: what we want
            except BotoCoreError as e:
                raise StackError(f"the S3 store at {self.s3_endpoint} cannot be reached: {e}") from None
            if what.startswith("PutObject"):
                with contextlib.suppress(ClientError, BotoCoreError):
                    self._s3().delete_object(Bucket=kwargs["Bucket"], Key=probe)
            raise StackError(
                f"the S3 store at {self.s3_endpoint} answers requests without credentials ({what}): anyone who"
                " reaches it could read, overwrite and delete the artifacts; give a store that checks keys, or"
                " --demo-s3 for a throwaway demo"
            )
        try:
            self._s3().list_buckets()
        except ClientError as e:
            raise StackError(
                f"the S3 store at {self.s3_endpoint} refuses the keys of AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: {e}"
            ) from None
        except BotoCoreError as e:
            raise StackError(f"the S3 store at {self.s3_endpoint} cannot be reached: {e}") from None

    def _start_s3(self) -> None:
        if self.demo_s3:
            port = free_port(self.host)
            log = self.folder / "s3.log"
            proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("moto_server")), "-H", self.host, "-p", str(port)],
                stdout=private_log(log),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._started("the demo S3 server (moto)", proc)
            self.s3_endpoint = f"http://{self.host}:{port}"
            wait_for(f"{self.s3_endpoint}/moto-api/", proc, "the S3 server (moto)", log)
        if self.s3_endpoint:
            from botocore.exceptions import BotoCoreError, ClientError

            s3 = self._s3()
            try:
                existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
                for bucket in {ARTIFACT_BUCKET, DVC_BUCKET} - existing:
                    s3.create_bucket(Bucket=bucket)
            except (BotoCoreError, ClientError) as e:
                raise StackError(f"the S3 store at {self.s3_endpoint}: its buckets: {e}") from None
        else:
            for folder in ("artifacts", "dvc"):
                (self.folder / folder).mkdir(mode=0o700, exist_ok=True)

    # ---- the MLflow server -----------------------------------------------------------------------------

    def _start_mlflow(self) -> None:
        log = self.folder / "mlflow.log"
        config = self.folder / "basic_auth.ini"
        write_secret(
            config,
            f"[mlflow]\ndefault_permission = {self.default_permission}\n"
            f"database_uri = {self.postgres.socket_uri('mlflow_auth')}\nadmin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Each request's password check is a deliberate slow hash: keep a good one for a minute (a
            # changed password may still work that long on the other worker).
            f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n",
        )
        env = {
            **os.environ,
            **self.s3_env(),
            "MLFLOW_BACKEND_STORE_URI": self.postgres.socket_uri("mlflow"),  # not an argument: `ps` shows those
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret(self.folder / "flask.secret"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI jobs here: no job worker processes
        }
        upgrade = subprocess.run([sys.executable, "-c", UPGRADE_DB], env=env, capture_output=True, text=True)
        if upgrade.returncode != 0:  # the tables, once, before the workers start
            raise StackError(f"mlflow db upgrade failed: {upgrade.stderr.strip()[-2000:]}")
        hosts = f"{self.host},{self.host}:{self.mlflow_port},localhost,localhost:{self.mlflow_port}"
        # fmt: off
        args = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--serve-artifacts", "--artifacts-destination", self.artifacts,
            "--host", self.host, "--port", str(self.mlflow_port), "--workers", str(self.workers),
            "--app-name", "basic-auth", "--allowed-hosts", hosts, "--cors-allowed-origins", self.url,
        ]
        # fmt: on
        proc = subprocess.Popen(
            args, env=env, stdout=private_log(log), stderr=subprocess.STDOUT, start_new_session=True
        )
        self._started("the MLflow server", proc)
        self._wait_for_own_server(proc, log)
        self.check_admin()

    def _wait_for_own_server(self, proc: subprocess.Popen, log: Path) -> None:
        """Until `proc` serves /health; whoever answers gets no credential unless `proc`'s group holds the
        port's listening socket."""
        wait_for(f"{self.url}/health", proc, "the MLflow server", log)
        if not listens(proc.pid, self.mlflow_port):
            raise StackError(f"another program answers on {self.url}: it gets none of the stack's passwords")

    def check_admin(self) -> None:
        """The auth database keeps the admin password of the folder's first start: any other gets 401."""
        try:
            self.api("GET", f"/api/2.0/mlflow/users/get?username={ADMIN}")
        except ApiError as e:
            if e.code != 401:
                raise
            raise StackError(
                f"MLFLOW_AUTH_ADMIN_PASSWORD differs from the admin password that MLflow's auth database in"
                f" {self.folder} holds (the one of its first start): export that one, or change it in MLflow"
            ) from None

    def api(
        self,
        method: str,
        endpoint: str,
        body: dict | None = None,
        user: str = ADMIN,
        password: str | None = None,
    ) -> dict:
        """A call of the MLflow server's REST API as `user` (admin by default); ApiError when refused."""
        token = b64encode(f"{user}:{password or self.admin_password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}{endpoint}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with LOCAL.open(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:
            answer = e.read().decode(errors="replace")
            try:
                parsed = json.loads(answer)
                error_code, message = parsed.get("error_code", ""), parsed.get("message", answer)
            except ValueError:
                error_code, message = "", answer
            raise ApiError(f"{method} {endpoint}: HTTP {e.code}: {message.strip()}", e.code, error_code) from None
        return json.loads(text) if text else {}

    def add_user(self, name: str, password: str) -> None:
        """The user with this password, made or (a restart) brought back to it."""
        try:
            self.api("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
        except ApiError as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise StackError(f"user {name!r}: MLflow refuses it: {e}") from None
            self.api("PATCH", "/api/2.0/mlflow/users/update-password", {"username": name, "password": password})

    def remove_users_not_in(self, names: list[str]) -> None:
        """Delete the users an earlier start made that this one does not name: their accounts and grants."""
        made = self.folder / "users.json"
        earlier = json.loads(made.read_text()) if made.exists() else []
        for name in sorted(set(earlier) - set(names)):
            try:
                self.api("DELETE", "/api/2.0/mlflow/users/delete", {"username": name})
            except ApiError as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            self.say(f"stack: removed user {name!r} (account and permissions): not named on this start")
        made.write_text(json.dumps(sorted(names)))

    def grant(self, experiment: str, name: str, permission: str) -> None:
        """Create the experiment if need be (as admin) and give `name` that permission on it (replacing the
        one a previous start gave)."""
        try:
            exp_id = self.api("POST", "/api/2.0/mlflow/experiments/create", {"name": experiment})["experiment_id"]
        except ApiError:
            query = urllib.parse.urlencode({"experiment_name": experiment})
            exp_id = self.api("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
        target = {"username": name, "resource_type": "experiment", "resource_id": exp_id}
        try:
            self.api("POST", "/api/3.0/mlflow/users/permissions/grant", {**target, "permission": permission})
        except ApiError as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self.api("POST", "/api/3.0/mlflow/users/permissions/revoke", target)
            self.api("POST", "/api/3.0/mlflow/users/permissions/grant", {**target, "permission": permission})

    # ---- the whole -------------------------------------------------------------------------------------

    def _stop_survivors(self) -> None:
        """Services of an earlier stack in this folder that could not stop them (kill -9): they hold the
        ports and the cluster."""
        self.record.stop_survivors(self.say)
        if self.postgres.running():
            self.say("stack: stopping PostgreSQL, left running by an earlier stack")
            self.postgres.stop()

    def start(self) -> Stack:
        owner = postgres_user()
        private_folder(self.folder, owner.pw_gid if owner else None)
        self._stop_survivors()
        check_port_free(self.host, self.mlflow_port, "the MLflow server")
        check_port_free(self.postgres.host, self.postgres.port, "PostgreSQL")
        if self.s3_endpoint and not self.demo_s3:
            self._check_store()
        (self.folder / "postgres.port").write_text(str(self.postgres.port))
        try:
            self._start_watchdog()
            self.postgres.start()
            self.postmaster = self.postgres.pid()
            self._start_s3()
            self._start_mlflow()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # A second Ctrl-C, or SIGHUP then SIGTERM, must not cut the stop short and leave PostgreSQL running.
        main = threading.current_thread() is threading.main_thread()
        before = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS} if main else {}
        try:
            for proc in reversed(self.procs):
                stop_group(proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            self.procs.clear()
            self.groups.clear()
            self.record.save({}, self.watchdog.pid if self.watchdog else None)
            self.postgres.stop()
            if self.watchdog:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self.watchdog.communicate(b"stopped", timeout=10)  # a word before the end: nothing to do
                self.watchdog = None
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _name(text: str) -> str:
    if ":" in text:
        raise argparse.ArgumentTypeError(
            "a user is a NAME; passwords never go on a command line (any account reads them with ps):"
            " put NAME:PASSWORD lines in a file only you can read and give --passwords FILE"
        )
    return text


def read_passwords(path: str) -> dict[str, str]:
    """NAME:PASSWORD lines from `path` (refused if others may read it) or stdin (`-`)."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            mode = os.stat(path).st_mode
            text = Path(path).read_text()
        except OSError as e:
            raise StackError(f"--passwords {path}: {e.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StackError(f"--passwords {path}: others may read it (mode {mode & 0o777:o}): chmod 600 {path}")
    passwords = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, password = line.strip().partition(":")
            if not (name and sep and password):
                raise StackError(f"--passwords {path}, line {number}: expected NAME:PASSWORD")
            passwords[name] = password
    return passwords


def check_users(admin_password: str, users: list[tuple[str, str]]) -> None:
    """MLflow's own verdict on the admin's password and each new user, before anything starts: every
    refusal in one message."""
    problems = [
        f"user {ADMIN!r}: the server's admin, set by MLFLOW_AUTH_ADMIN_PASSWORD" for n, _ in users if n == ADMIN
    ]
    done = subprocess.run(
        [sys.executable, "-c", CHECK_USERS], input=json.dumps([admin_password, users]), capture_output=True, text=True
    )  # passwords on stdin, not in arguments
    if done.returncode != 0:
        raise StackError(f"could not check the users with MLflow: {done.stderr.strip()[-1000:]}")
    problems += done.stdout.splitlines()
    if problems:
        raise StackError("; ".join(problems))


def serve(args: argparse.Namespace) -> None:
    experiment = args.experiment or load_params(args.params).tracking.experiment
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
    if not password:
        raise StackError("set MLFLOW_AUTH_ADMIN_PASSWORD, the password of the server's admin user")
    passwords = read_passwords(args.passwords) if args.passwords else {}
    missing = [name for name in args.writer + args.reader if name not in passwords]
    if missing:
        raise StackError(f"no password for {', '.join(missing)}: add NAME:PASSWORD lines to a --passwords file")
    both = set(args.writer) & set(args.reader)
    if both:
        raise StackError(f"{', '.join(sorted(both))}: both --writer and --reader")
    users = [(name, passwords[name]) for name in dict.fromkeys(args.writer + args.reader)]
    check_users(password, users)
    stack = Stack(
        Path(args.dir),
        password,
        host=args.host,
        mlflow_port=args.port,
        s3_endpoint=args.s3_endpoint,
        demo_s3=args.demo_s3,
        postgres_port=args.postgres_port,
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    with stack:
        stack.remove_users_not_in([name for name, _ in users])
        for name, pw in users:
            stack.add_user(name, pw)
        for name in args.writer:
            stack.grant(experiment, name, "EDIT")
        for name in args.reader:
            stack.grant(experiment, name, "READ")
        storage = stack.folder / "optuna.url"
        write_secret(storage, stack.postgres.uri("optuna") + "\n")
        if stack.s3_endpoint:
            dvc = (
                f"  dvc remote add -d team s3://{DVC_BUCKET} && dvc remote modify team endpointurl"
                f" {stack.s3_endpoint}\n  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the store's keys"
            )
        else:
            dvc = (
                f"  dvc remote add -d team {stack.dvc_remote}                 # on this machine\n"
                f"  dvc remote add -d team ssh://USER@THIS-HOST{stack.dvc_remote}  # elsewhere (pip install dvc-ssh)"
            )
        demo = (
            "\nDEMO S3 (moto): anyone on this machine can read, overwrite and wipe it; it forgets all at exit.\n"
            if args.demo_s3
            else ""
        )
        print(
            f"MLflow server: {stack.url} (admin: {ADMIN} / $MLFLOW_AUTH_ADMIN_PASSWORD)\n"
            f"artifacts: {stack.artifacts}, served by the MLflow server to its users\n"
            f"sweeps' storage: role optuna, database optuna on 127.0.0.1:{stack.postgres.port};"
            f' its URL is in {storage} (0600): OPTUNA_STORAGE="$(cat {storage})"\n'
            f"  another machine: ssh -N -L {stack.postgres.port}:127.0.0.1:{stack.postgres.port} USER@THIS-HOST"
            " (docs/sweeps.md)\n\n"
            f"the pipeline, as a writer:\n"
            f"  export MLFLOW_TRACKING_URI={stack.url} MLFLOW_TRACKING_USERNAME=NAME MLFLOW_TRACKING_PASSWORD=...\n"
            f"the DVC remote:\n{dvc}\n{demo}\n"
            "Ctrl-C stops the stack.",
            flush=True,
        )
        dead = None
        with contextlib.suppress(KeyboardInterrupt):
            while (dead := stack.dead()) is None:
                time.sleep(1)
        if dead:
            raise StackError(f"{dead}: the stack stops")


def main(argv=None) -> int:
    # Installed first: a closed terminal (SIGHUP) or a kill during start-up stops what has started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=".team", help="state folder: PostgreSQL's data, artifacts, logs, secrets")
    ap.add_argument("--host", default="127.0.0.1", help="the address the MLflow server listens on")
    ap.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    ap.add_argument("--postgres-port", type=int, default=0, help="default: the last start's, else a free one")
    store = ap.add_mutually_exclusive_group()
    store.add_argument(
        "--s3-endpoint",
        help="an S3 store that checks keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) for artifacts and DVC",
    )
    store.add_argument("--demo-s3", action="store_true", help="moto's S3 server: no credentials, in memory")
    ap.add_argument(
        "--experiment",
        help="the experiment writers get EDIT on (default: params.yaml's tracking.experiment)",
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--passwords", help="a file only you can read of NAME:PASSWORD lines, or - for stdin")
    ap.add_argument("--writer", type=_name, action="append", default=[], help="NAME, may log runs")
    ap.add_argument("--reader", type=_name, action="append", default=[], help="NAME, may only read")
    args = ap.parse_args(argv)
    try:
        serve(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line, no traceback: what went wrong is the message (ExplainedError's, or the raw one)
        what = str(e) if isinstance(e, ExplainedError) else f"{type(e).__name__}: {e}"
        print(f"stack: error: {' '.join(what.split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
