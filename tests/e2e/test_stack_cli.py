"""`python -m mnist_softmax.team.stack` as a team member runs it: users' passwords from a 0600 file, refusals
(a refused user, a port someone else holds, a store that takes no credentials) as one line before anything
starts, and a stack killed with -9, started again with the same arguments, then closed with SIGHUP."""

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
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import ClassVar

import pytest

from mnist_softmax.team.services import DATABASES, SUPERUSER, free_port, group_members
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
    return P.Proc(stack_args(state, port, *extra), state, P.env(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD, **env))


def refused(state: Path, port: int, *extra: str, **env) -> str:
    """The one line a refused start prints; nothing was started, no traceback."""
    proc = start(state, port, *extra, **env)
    assert proc.wait() == 1, proc.output
    lines = proc.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stack: error: "), proc.output
    assert not (state / "team" / "postgres").exists()
    return lines[0]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 to anything, as some other program on the port might, and keeps the headers it got."""

    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PATCH = do_GET

    def log_message(self, *args):
        pass


def test_a_refused_user_is_one_line_before_anything_starts(state):
    short = state / "short"
    short.write_text(f"{ALICE[0]}:{ALICE[1]}\ncarol:too-short\n")
    short.chmod(0o600)
    line = refused(state, free_port(), "--writer", "alice", "--reader", "carol", "--passwords", str(short))
    assert "'carol'" in line and "Password must be at least 12 characters" in line and "alice" not in line
    short.chmod(0o644)
    assert "chmod 600" in refused(state, free_port(), "--writer", "alice", "--passwords", str(short))
    assert "no password for dave" in refused(state, free_port(), "--writer", "dave")
    on_the_command_line = start(state, free_port(), "--writer", f"{ALICE[0]}:{ALICE[1]}")
    assert on_the_command_line.wait() == 2 and "never go on a command line" in on_the_command_line.output


def test_a_port_in_use_is_an_error_before_anything_starts_and_gets_no_credential(state):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        line = refused(state, port, "--writer", "alice")
    finally:
        server.shutdown()
        server.server_close()
    assert f"port {port}" in line and "in use" in line
    assert Recorder.seen == []


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


def test_killed_restarted_then_hung_up(state):
    """kill -9 of the stack leaves its services running; a start with the same arguments stops them, comes up
    with the same users, permissions and database port; SIGHUP stops all of it. Meanwhile no account reads a
    password off `ps`, and what the stack prints names no superuser and holds no password."""
    team, port = state / "team", free_port()
    users = ("--writer", ALICE[0], "--reader", BOB[0])
    first = start(state, port, *users)
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
    postgres_port = (team / "postgres.port").read_text()
    groups = json.loads((team / "services.json").read_text())["groups"]
    os.kill(first.popen.pid, signal.SIGKILL)
    first.wait()
    assert all(group_members(pgid) for pgid in groups.values())  # left running, holding the port

    second = start(state, port, *users)
    try:
        second.wait_for(READY)
        assert "left running by an earlier stack" in second.output and "Traceback" not in second.output
        assert (team / "postgres.port").read_text() == postgres_port
        token = b64encode(f"{BOB[0]}:{BOB[1]}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
        run = {"experiment_id": experiment_id}
        assert call(port, ALICE, "/api/2.0/mlflow/runs/create", run) == 200  # EDIT, as after the first start
        assert call(port, BOB, "/api/2.0/mlflow/runs/create", run) == 403  # READ
        third = start(state, free_port(), *users)  # same folder, while the second runs: refused, nothing stopped
        assert third.wait() == 1 and f"a stack (pid {second.popen.pid}) is running" in third.output, third.output
        assert call(port, ALICE, "/api/2.0/mlflow/runs/create", run) == 200
        groups = json.loads((team / "services.json").read_text())["groups"]
        os.kill(second.popen.pid, signal.SIGHUP)  # the terminal closed
        assert second.wait(120) in (0, 130), second.output
    finally:
        second.kill_tree()
    assert [pgid for pgid in groups.values() if group_members(pgid)] == []
    for ended in (port, int(postgres_port)):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ended), timeout=5).close()
