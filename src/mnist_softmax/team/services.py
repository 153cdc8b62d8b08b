"""The pieces the team's stack (stack.py) is built from: ports and who listens on them, waiting for a
service's health URL, a private state folder with secrets kept 0600 from their first byte, the services a
killed stack left running, and a PostgreSQL cluster run as the `postgres` user with one owner role per
database."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mnist_softmax.errors import ExplainedError
from mnist_softmax.tracking.context import boot_id, process_start

SUPERUSER = "postgres"  # the cluster's bootstrap role: only the stack itself logs in with it
DATABASES = ("mlflow", "mlflow_auth", "optuna")  # each owned by the role of the same name, nothing more
START_TIMEOUT_S = 120  # mlflow server answers /health after ~20 s on 2 cores
# What the stack sends its own services, passwords included, goes straight to them: never to the proxy
# that http_proxy names.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(ExplainedError, RuntimeError):
    """A service of the stack could not start; the message says which and why."""


# ---- ports ---------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, what: str) -> None:
    """StackError unless `port` can be listened on: another program there would be sent our credentials."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise StackError(f"{what}: cannot listen on {host}:{port}: {e.strerror}") from None
            raise StackError(
                f"{what}: port {port} on {host} is already in use by another program; stop it or choose"
                " another port (a stack left running by a killed one is stopped by the next start)"
            ) from None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def listens(pgid: int, port: int) -> bool:
    """Whether a process of the process group `pgid` holds the listening socket of `port`."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for pid in group_members(pgid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return True
    return False


def wait_for(url: str, proc: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), LOCAL.open(url, timeout=2):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            last = f": {lines[-1].strip()[:300]}" if lines else ""
            raise StackError(f"{name} did not come up at {url} (exit {proc.poll()}); see its log {log}{last}")
        time.sleep(0.5)


# ---- the state folder and its secrets ------------------------------------------------------------------


def postgres_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when the stack runs as root (it refuses to run as root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "there is no postgres user to run PostgreSQL as (it refuses root): install PostgreSQL's server"
            " package (Debian: apt-get install postgresql), or run the stack as another user"
        ) from None


def private_folder(path: Path, postgres_gid: int | None) -> None:
    """`path` reachable by its owner only; with `postgres_gid`, the postgres user's group may also pass
    through (not list) to reach its cluster folder."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if postgres_gid is not None:
        os.chown(path, -1, postgres_gid)
    path.chmod(0o710 if postgres_gid is not None else 0o700)


def write_secret(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `text`, mode 0600 (owned by `owner`) from before its first byte: the umask
    cannot widen a mode given at creation, and a later chmod would leave a moment readable by others."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def secret(path: Path) -> str:
    """A random secret kept in `path` (0600), made on first use."""
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def private_log(path: Path):
    """A service's log, 0600: it may quote URLs and configuration."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")


# ---- services a killed stack left behind ---------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                state, _ppid, group = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(group) == pgid and state != "Z":  # a zombie has ended, only its parent has not looked
                    members.append(int(entry))
    return members


def started_at(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if there is no such process."""
    start = process_start(pid)
    return int(start) if start else None


@dataclasses.dataclass
class ServiceRecord:
    """The stack's process and the process groups of the services it started, so that the next start with
    the same folder finds those a SIGKILLed stack could not stop (same boot only: a reboot ended them)."""

    path: Path

    def load(self) -> dict:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(self.path.read_text())
            if data.get("boot_id") == boot_id():
                return data
        return {}

    def save(self, groups: dict[str, list], watchdog: int | None = None) -> None:
        """`groups`: name -> [process group id, its leader's start time]."""
        data = {"boot_id": boot_id(), "stack": identity(os.getpid()), "groups": groups}
        if watchdog:
            data["watchdog"] = identity(watchdog)
        self.path.write_text(json.dumps(data))

    def stop_survivors(self, say: Callable[[str], None], wait_s: float = 60) -> None:
        """Stop the services of an earlier stack that is gone; StackError if it is still running. A group is
        stopped only while its leader is the process recorded (same pid and start time): once it ended, its
        id may name another program's group."""
        data = self.load()
        pid = data.get("stack", [None])[0]
        if pid and pid != os.getpid() and alive(data["stack"]):
            raise StackError(f"a stack (pid {pid}) is running with this folder: stop it first (Ctrl-C, kill {pid})")
        deadline = time.monotonic() + wait_s
        while alive(data.get("watchdog")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the killed stack's watchdog is stopping its services
        for name, leader in data.get("groups", {}).items():
            if alive(leader) and group_members(leader[0]):
                say(f"stack: stopping {name} (process group {leader[0]}), left running by an earlier stack")
                stop_group(leader[0])
        self.save({})


def identity(pid: int) -> list:
    """[pid, its start time]: with the boot id, names one process even once its pid is reused."""
    return [pid, started_at(pid)]


def alive(recorded: list | None) -> bool:
    """Whether the process recorded by `identity` is still running (not another one with its pid)."""
    if not (isinstance(recorded, list) and len(recorded) == 2 and recorded[1] is not None):
        return False  # nothing recorded, or not in this form: no process to be sure of
    return started_at(recorded[0]) == recorded[1]


# Run by the stack's watchdog (stack.py): it waits for the stack's end (its stdin closes, even on kill -9)
# and then stops whatever the stack left running, as the next start would.
WATCHDOG = """
import signal, sys
from pathlib import Path
for signum in (signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
if not sys.stdin.buffer.read():  # the stack stopped its services itself when it says so first
    from mnist_softmax.team.services import stop_left_behind
    stop_left_behind(Path(sys.argv[1]))
"""


def stop_left_behind(folder: Path) -> None:
    """What the watchdog does once the stack's process is gone: its services and its PostgreSQL stopped."""
    record = ServiceRecord(folder / "services.json")
    data = record.load()
    for leader in data.get("groups", {}).values():
        if alive(leader):
            stop_group(leader[0])
    record.path.write_text(json.dumps({"boot_id": boot_id(), "groups": {}}))
    postgres = Postgres(folder / "postgres", "127.0.0.1", 0)
    if postgres.running():
        postgres.stop()


def stop_group(pgid: int, timeout: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# ---- PostgreSQL ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Postgres:
    """A PostgreSQL cluster in `folder`, as the `postgres` user when this process is root. The bootstrap
    superuser's password stays in the state folder; MLflow's runs, MLflow's users and Optuna's studies are
    each a database owned by a role of its name that can reach that database only."""

    folder: Path
    host: str
    port: int

    def __post_init__(self):
        self.state = self.folder.parent
        self.owner = postgres_user()

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.owner else args

    def password(self, role: str) -> str:
        return secret(self.state / f"db-{role}.password")

    def running(self) -> bool:
        data = self.folder / "data"
        return (
            data.exists()
            and subprocess.run(self._as_owner(["pg_ctl", "status", "-D", str(data)]), capture_output=True).returncode
            == 0
        )

    def start(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if shutil.which(tool) is None:
                raise StackError(f"PostgreSQL's {tool} is not on PATH (Debian: apt-get install postgresql)")
        data = self.folder / "data"
        self.folder.mkdir(mode=0o700, exist_ok=True)
        ids = (self.owner.pw_uid, self.owner.pw_gid) if self.owner else None
        if ids:
            os.chown(self.folder, *ids)
            if subprocess.run(self._as_owner(["test", "-x", str(self.folder)])).returncode:
                raise StackError(
                    f"the postgres user cannot reach {self.folder}: give --dir a folder whose parents it may"
                    " enter (chmod o+x)"
                )
        if not data.exists():
            pwfile = self.folder / "pwfile"
            write_secret(pwfile, self.password(SUPERUSER), owner=ids)
            done = subprocess.run(
                self._as_owner(
                    ["initdb", "-U", SUPERUSER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-D", str(data)]
                ),
                capture_output=True,
                text=True,
            )
            pwfile.unlink()
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.folder}"
        log = str(self.folder / "postgres.log")
        done = subprocess.run(
            self._as_owner(["pg_ctl", "-D", str(data), "-l", log, "-o", options, "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {done.stdout.strip()[-1000:]} {done.stderr.strip()[-1000:]} (log: {log})"
            )
        self._owner_roles()

    def _owner_roles(self) -> None:
        """Each database and its owner role, made or brought back to what the stack expects (a restart)."""
        import psycopg2

        # The Unix socket in the cluster's folder, which only the postgres user can write: no other program
        # can be listening there, as one could on the TCP port, so the superuser's password reaches our own.
        try:
            self._make_roles(
                psycopg2.connect(
                    host=str(self.folder),
                    port=self.port,
                    user=SUPERUSER,
                    password=self.password(SUPERUSER),
                    dbname="postgres",
                )
            )
        except psycopg2.Error as e:
            raise StackError(f"PostgreSQL's roles and databases: {' '.join(str(e).split())}") from None

    def _make_roles(self, con) -> None:
        from psycopg2 import sql

        con.autocommit = True
        try:
            with con.cursor() as cur:
                for name in DATABASES:
                    role = sql.Identifier(name)
                    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                    verb = sql.SQL("ALTER" if cur.fetchone() else "CREATE")
                    cur.execute(
                        sql.SQL(
                            "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD %s"
                        ).format(verb, role),
                        (self.password(name),),
                    )
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
                    cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))
                cur.execute("REVOKE ALL ON DATABASE postgres, template1 FROM PUBLIC")
        finally:
            con.close()

    def uri(self, database: str) -> str:
        """The database's URL for clients, as its owner role (never the superuser), over TCP."""
        return f"postgresql+psycopg2://{database}:{self.password(database)}@{self.host}:{self.port}/{database}"

    def socket_uri(self, database: str) -> str:
        """The same through the cluster's Unix socket: for the stack's own MLflow server."""
        where = f"host={self.folder}&port={self.port}"  # the port names the socket file
        return f"postgresql+psycopg2://{database}:{self.password(database)}@/{database}?{where}"

    def pid(self) -> list | None:
        """The postmaster's identity (services.identity), None if it is not running."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
            return identity(pid) if started_at(pid) is not None else None
        return None

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(["pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
