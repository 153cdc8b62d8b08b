"""The pieces the team's stack (stack.py) is built from: free ports, waiting for a service's health URL,
secrets kept in 0600 files, and a PostgreSQL cluster run as the `postgres` user."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from mnist_softmax.errors import ExplainedError

POSTGRES_USER = "mlflow"
START_TIMEOUT_S = 120  # mlflow server answers /health after ~20 s on 2 cores


class StackError(ExplainedError, RuntimeError):
    """A service of the stack could not start; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise StackError(f"{name} did not come up at {url} (exit {proc.poll()}); its log {log}:\n{tail}")
        time.sleep(0.5)


def secret(path: Path) -> str:
    """A random secret kept in `path` (0600), made on first use."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclasses.dataclass
class Postgres:
    """A PostgreSQL cluster in `folder`, as the `postgres` user when this process is root."""

    folder: Path
    host: str
    port: int

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def start(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if shutil.which(tool) is None:
                raise StackError(f"PostgreSQL's {tool} is not on PATH (Debian: apt-get install postgresql)")
        data = self.folder / "data"
        self.password = secret(self.folder.parent / "postgres.password")
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and subprocess.run(self._as_owner(["test", "-x", str(self.folder.parent)])).returncode:
            raise StackError(
                f"the postgres user cannot reach {self.folder.parent}: give --dir a folder whose"
                " parents it may enter (chmod o+x)"
            )
        if not data.exists():
            pwfile = self.folder / "pwfile"
            pwfile.write_text(self.password)
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                for path in (self.folder, pwfile):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            done = subprocess.run(
                self._as_owner(
                    [
                        "initdb",
                        "-U",
                        POSTGRES_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-D",
                        str(data),
                    ]
                ),
                capture_output=True,
                text=True,
            )
            pwfile.unlink()
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.folder}"
        done = subprocess.run(
            self._as_owner(
                [
                    "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(self.folder / "postgres.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {done.stdout.strip()[-1000:]} {done.stderr.strip()[-1000:]}"
                f" (log: {self.folder / 'postgres.log'})"
            )
        for database in ("mlflow", "mlflow_auth", "optuna"):
            self._create_database(database)

    def _create_database(self, name: str) -> None:
        import psycopg2

        con = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=POSTGRES_USER,
            password=self.password,
            dbname="postgres",
        )
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://{POSTGRES_USER}:{self.password}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(["pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
