"""`python -m mnist_softmax.team.stack` as a team member runs it: users' passwords from a 0600 file, refusals
(a refused user, a port someone else holds, a store that takes no credentials) as one line before anything
starts, and a stack killed with -9 (its watchdog stops its services), started again with one user fewer, then
closed with SIGHUP and a SIGTERM while it stops."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import ClassVar

import pytest

from mnist_softmax.team.services import DATABASES, SUPERUSER, alive, free_port, group_members
from tests import harness as P
from tests.e2e.conftest import ADMIN_PASSWORD, ALICE, BOB

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("initdb") is None, reason="PostgreSQL not installed"),
]

READY = "Ctrl-C stops the stack"
EXPERIMENT = "stack-cli"


@pytest.fixture
def state():
    """A folder for the state folder, under /tmp (the postgres user must reach it), and a 0600 passwords file
    for alice and bob."""
    base = Path(tempfile.mkdtemp(prefix="stack-cli-"))
    base.chmod(0o755)
    passwords = base / "passwords"
    passwords.write_text(f"{ALICE[0]}:{ALICE[1]}\n{BOB[0]}:{BOB[1]}\n")
    passwords.chmod(0o600)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def stack_args(state: Path, port: int, *extra: str) -> list[str]:
    return [
        "python", "-m", "mnist_softmax.team.stack", "--dir", str(state / "team"), "--port", str(port),
        "--experiment", EXPERIMENT, "--passwords", str(state / "passwords"), *extra,
    ]  # fmt: skip


def start(state: Path, port: int, *extra: str, **env) -> P.Proc:
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, **env}
    return P.Proc(stack_args(state, port, *extra), state, P.env(**env))


def refused(state: Path, port: int, *extra: str, **env) -> str:
    """The one line a refused start prints; nothing was started, no traceback."""
    proc = start(state, port, *extra, **env)
    assert proc.wait() == 1, proc.output
    lines = proc.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stack: error: "), proc.output
    assert not (state / "team" / "postgres").exists()
    return lines[0]


def test_a_refused_user_is_one_line_before_anything_starts(state):
    short = state / "short"
    short.write_text(f"{ALICE[0]}:{ALICE[1]}\ncarol:too-short\n")
    short.chmod(0o600)
    line = refused(state, free_port(), "--writer", "alice", "--reader", "carol", "--passwords", str(short))
    assert "'carol'" in line and "Password must be at least 12 characters" in line and "alice" not in line
    short.chmod(0o644)
    assert "chmod 600" in refused(state, free_port(), "--writer", "alice", "--passwords", str(short))
    assert "no password for dave" in refused(state, free_port(), "--writer", "dave")
    line = refused(state, free_port(), "--writer", "alice", MLFLOW_AUTH_ADMIN_PASSWORD="too-short")
    assert line.startswith("stack: error: MLFLOW_AUTH_ADMIN_PASSWORD: MLflow refuses it: Password must be"), line
    on_the_command_line = start(state, free_port(), "--writer", f"{ALICE[0]}:{ALICE[1]}")
    assert on_the_command_line.wait() == 2 and "never go on a command line" in on_the_command_line.output


def test_a_port_in_use_is_an_error_before_anything_starts_and_gets_no_credential(state):
    with P.recording_server() as (port, seen):
        line = refused(state, port, "--writer", "alice")
    assert f"port {port}" in line and "in use" in line
    assert seen == []
    line = refused(state, free_port(), "--writer", "alice", "--host", "192.0.2.1")  # an address of no interface here
    assert "cannot listen on 192.0.2.1" in line, line


class FakeStore(http.server.BaseHTTPRequestHandler):
    """An S3 store that refuses every request (AccessDenied), but for HEAD of `public` buckets."""

    public: ClassVar[set[str]] = set()

    def do_GET(self):
        bucket = self.path.lstrip("/").split("/")[0].split("?")[0]
        if self.command == "HEAD" and bucket in FakeStore.public:
            self.send_response(200)
            self.end_headers()
            return
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_PUT = do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_store_that_takes_no_credentials_is_refused(state):
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    moto.start()
    try:
        endpoint = "http://{}:{}".format(*moto.get_host_and_port())
        keys = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}
        line = refused(state, free_port(), "--writer", "alice", "--s3-endpoint", endpoint, **keys)
    finally:
        moto.stop()
    assert "answers requests without credentials" in line and "--demo-s3" in line


def test_a_public_bucket_and_refused_keys_are_refused(state):
    """A store that refuses an anonymous ListBuckets but lets anyone at one of the stack's buckets; then one
    that refuses the stack's keys: each one line, before PostgreSQL starts."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeStore)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        keys = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}
        FakeStore.public = {"dvc"}
        line = refused(state, free_port(), "--writer", "alice", "--s3-endpoint", endpoint, **keys)
        assert "answers requests without credentials (HeadBucket dvc)" in line, line
        FakeStore.public = set()
        line = refused(state, free_port(), "--writer", "alice", "--s3-endpoint", endpoint, **keys)
        assert "refuses the keys" in line and "AccessDenied" in line, line
    finally:
        server.shutdown()
        server.server_close()


def call(port: int, user: tuple[str, str], endpoint: str, body: dict) -> int:
    token = b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


NOT_SECRET = {"postgres.port", "services.json", "users.json"}


def ended(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_killed_restarted_then_hung_up(state):
    """kill -9 of the stack: its watchdog stops its services; a start with the same arguments less one reader
    comes up with the same users, permissions and database port, the reader removed; SIGHUP, then SIGTERM while
    it stops, stops all of it. Meanwhile no account reads a password off `ps`, what the stack prints names no
    superuser and holds no password, and every secret file in its folder is 0600."""
    team, port = state / "team", free_port()
    first = start(state, port, "--writer", ALICE[0], "--reader", BOB[0])
    first.wait_for(READY)
    secrets = [ADMIN_PASSWORD, ALICE[1], BOB[1], *((team / f"db-{r}.password").read_text() for r in DATABASES)]
    superuser = (team / f"db-{SUPERUSER}.password").read_text()
    ps = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "ps", "-eo", "args"],
        capture_output=True,
        text=True,
    ).stdout
    assert "mlflow server" in ps and [s for s in [*secrets, superuser] if s in ps] == []
    assert [s for s in [*secrets, superuser] if s in first.output] == [] and f"{SUPERUSER}:" not in first.output
    storage = re.search(r"its URL is in (\S+) ", first.output)
    assert storage and Path(storage[1]).read_text().startswith("postgresql+psycopg2://optuna:")
    files = {p.name: oct(p.stat().st_mode & 0o777) for p in team.iterdir() if p.is_file() and p.name not in NOT_SECRET}
    assert "optuna.url" in files and set(files.values()) == {"0o600"}, files
    postgres_port = int((team / "postgres.port").read_text())
    record = json.loads((team / "services.json").read_text())
    os.kill(first.popen.pid, signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 60
    while not (ended(port) and ended(postgres_port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ended(port) and ended(postgres_port)  # the watchdog stopped them
    assert [pgid for pgid, _ in record["groups"].values() if group_members(pgid)] == []

    second = start(state, port, "--writer", ALICE[0])  # bob is no longer named
    try:
        second.wait_for(READY)
        assert "removed user 'bob'" in second.output and "Traceback" not in second.output, second.output
        assert int((team / "postgres.port").read_text()) == postgres_port
        token = b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
        run = {"experiment_id": experiment_id}
        assert call(port, ALICE, "/api/2.0/mlflow/runs/create", run) == 200  # EDIT, as after the first start
        assert call(port, BOB, "/api/2.0/mlflow/runs/create", run) == 401  # no account any more
        third = start(state, free_port(), "--writer", ALICE[0])  # same folder, while the second runs: refused
        assert third.wait() == 1 and f"a stack (pid {second.popen.pid}) is running" in third.output, third.output
        assert call(port, ALICE, "/api/2.0/mlflow/runs/create", run) == 200  # nothing stopped
        record = json.loads((team / "services.json").read_text())
        os.kill(second.popen.pid, signal.SIGHUP)  # the terminal closed
        time.sleep(0.5)
        os.kill(second.popen.pid, signal.SIGTERM)  # and a kill while it stops: ignored
        assert second.wait(120) in (0, 130), second.output
        assert "Traceback" not in second.output, second.output
    finally:
        second.kill_tree()
    assert [pgid for pgid, _ in record["groups"].values() if group_members(pgid)] == []
    assert ended(port) and ended(postgres_port)
    deadline = time.monotonic() + 10
    while alive(record["watchdog"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(record["watchdog"])  # told the stack stopped its services itself
