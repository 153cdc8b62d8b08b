"""Fault-injection fixtures: a real copy of the project (git + DVC) on a tiny synthetic dataset, and helpers to
start, watch and kill real stage processes.

`base_project` (once per session) copies the project's code into a temp folder, registers the tiny dataset in
the copy's src/datasets.py, commits, and runs `dvc repro preprocess`. `project` gives each test its own
copy of that (cache, lock and data included) so it starts with download and preprocess done.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests import synthetic

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
COPIED = ["src", "pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
          ".gitignore", "metrics/.gitignore"]
TRAIN_CMD = ["python", "-m", "pipeline.train", "--params", "params.yaml", "--data", "data/prepared",
             "--model", "models/model.pt", "--history", "metrics/train_history.json",
             "--checkpoint", ".checkpoints/train.pt"]
WAIT_S = 240  # generous ceiling for anything to happen on a loaded 2-core machine; never a pass condition


def env(**extra) -> dict[str, str]:
    """The environment of a fresh shell with the project's venv first on PATH; no outer DVC/MLflow/git state."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("DVC_", "MLFLOW_", "GIT_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(GIT_AUTHOR_NAME="faults", GIT_AUTHOR_EMAIL="faults@example.invalid",
             GIT_COMMITTER_NAME="faults", GIT_COMMITTER_EMAIL="faults@example.invalid",
             PYTHONDONTWRITEBYTECODE="1", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
             DO_NOT_TRACK="true", GIT_TERMINAL_PROMPT="0")
    e.update(extra)
    return e


def files_for_tests() -> dict[str, bytes]:
    return synthetic.raw_files(n_train=600, n_test=100)


def _sigint_not_ignored() -> None:
    """A shell starts a background job (`make test &`, nohup) with SIGINT ignored, and exec keeps an ignored
    signal ignored: DVC and its stages would never see the Ctrl-C the tests send. A handled signal is reset
    to its default in an exec'ed child, so handle it here the way Python does by default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Proc:
    """A started process (own session, so its whole tree can be killed) whose merged output is collected
    line by line in a thread; wait_for() blocks until a line matches."""

    def __init__(self, args, cwd, env_):
        _sigint_not_ignored()
        self.popen = subprocess.Popen(args, cwd=cwd, env=env_, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match:
        """The first output line matching `pattern`; fails if the process ends or `timeout` passes first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                if not self._reader.is_alive():
                    raise AssertionError(f"process ended (rc {self.popen.poll()}) before a line matched"
                                         f" {pattern!r}; output:\n{''.join(self.lines)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matched {pattern!r} in {timeout} s; output:\n"
                                         f"{''.join(self.lines)}")
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = WAIT_S) -> int:
        rc = self.popen.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill_tree(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(30)


class Project:
    def __init__(self, path: Path, raw_dir: Path):
        self.path, self.raw_dir = path, raw_dir
        self._procs: list[Proc] = []

    # -- files -------------------------------------------------------------------------------------------
    def params(self, **overrides) -> dict:
        """Write params.yaml: the tiny dataset's params from the `dir:` source, plus dotted overrides."""
        params = synthetic.tiny_params([f"dir:{self.raw_dir}"], **overrides)
        synthetic.write_params(self.path / "params.yaml", params)
        return params

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    @property
    def db(self) -> Path:
        return self.path / "mlflow.db"

    # -- processes ---------------------------------------------------------------------------------------
    def run(self, *args, timeout: float = WAIT_S, env_: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=self.path, env=env_ or env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def dvc(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, **kw)

    def start(self, *args, env_: dict | None = None) -> Proc:
        proc = Proc(list(args), self.path, env_ or env())
        self._procs.append(proc)
        return proc

    def stage_pid(self, module: str, timeout: float = WAIT_S) -> int:
        """PID of the running `python -m <module>` whose working directory is this project."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in stage_pids(module, self.path):
                return pid
            time.sleep(0.02)
        raise AssertionError(f"no `python -m {module}` process in {self.path} within {timeout} s")

    def cleanup(self):
        for proc in self._procs:
            proc.kill_tree()
        for pid in stage_pids(None, self.path):  # a stage DVC started lives in DVC's session: ours too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stage_pids(module: str | None, cwd: Path) -> list[int]:
    """PIDs of `python -m pipeline.*` processes (of `module` if given) running in `cwd`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            where = os.readlink(entry / "cwd")
        except OSError:
            continue
        if Path(where) != cwd or b"-m" not in argv:
            continue
        mod = argv[argv.index(b"-m") + 1].decode(errors="replace") if argv.index(b"-m") + 1 < len(argv) else ""
        if (module is None and mod.startswith("pipeline.")) or mod == module:
            found.append(int(entry.name))
    return found


# -- MLflow store, read straight from SQLite (no mlflow import in the test process) ----------------------

def runs(db: Path) -> list[dict]:
    """Every run in the store, oldest first: id, status, tags, metrics {key: [(step, value), ...]}."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out = []
        for run_id, status, start in con.execute("SELECT run_uuid, status, start_time FROM runs ORDER BY start_time"):
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
            metrics: dict[str, list] = {}
            for key, step, value in con.execute(
                    "SELECT key, step, value FROM metrics WHERE run_uuid = ? ORDER BY key, step, timestamp",
                    (run_id,)):
                metrics.setdefault(key, []).append((step, value))
            out.append({"id": run_id, "status": status, "tags": tags, "metrics": metrics})
        return out
    finally:
        con.close()


def steps(run: dict, key: str = "train_loss") -> list[int]:
    return [step for step, _ in run["metrics"].get(key, [])]


# -- fixtures ------------------------------------------------------------------------------------------

def _copy_code(dest: Path) -> None:
    for rel in COPIED:
        src = ROOT / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, target)


@pytest.fixture(scope="session")
def raw_files() -> dict[str, bytes]:
    return files_for_tests()


@pytest.fixture(scope="session")
def base_project(tmp_path_factory, raw_files) -> Project:
    """Project copy with the tiny dataset downloaded and preprocessed by DVC, committed in git."""
    top = tmp_path_factory.mktemp("faults")
    raw_dir = synthetic.write_files(top / "raw-gz", raw_files, gz=True)
    path = top / "base"
    path.mkdir()
    _copy_code(path)
    with open(path / "src" / "datasets.py", "a") as f:
        f.write(synthetic.registration_code(raw_files))
    project = Project(path, raw_dir)
    project.params()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "base"],
                ["dvc", "repro", "preprocess"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "prepared"],
                # The project's MLflow store, created once (tables + experiment) as after a first training.
                ["python", "-c", "from src.mlflow_tracker import Tracker; Tracker('mnist-softmax')"]):
        done = project.run(*cmd)
        assert done.returncode == 0, f"{cmd}: {done.stdout}"
    return project


@pytest.fixture
def project(base_project, tmp_path) -> Project:
    """A private copy of base_project (git, DVC cache, data) for one test; its processes are killed after."""
    path = tmp_path / "project"
    shutil.copytree(base_project.path, path, symlinks=True)
    proj = Project(path, base_project.raw_dir)
    con = sqlite3.connect(proj.db)  # the copied store's artifact folder: this copy's mlruns, not the base's
    with con:
        con.execute("UPDATE experiments SET artifact_location = ?", ((path / "mlruns").as_uri(),))
    con.close()
    yield proj
    proj.cleanup()


def python() -> str:
    return str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())
