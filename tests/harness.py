"""The one harness of the e2e and fault tests and the benchmarks: a temp copy of the project as its own git
repository, real `dvc` / `mlflow` / stage processes in a clean environment, and the MLflow store read back
through MlflowClient.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

from mnist_softmax.team.services import free_port

ROOT = Path(__file__).resolve().parent.parent  # the real project
BIN = Path(sys.executable).parent  # the venv running this: its python, dvc and mlflow
STAGES = list(YAML(typ="safe").load((ROOT / "dvc.yaml").read_text())["stages"])  # in pipeline order
EXPERIMENT = YAML(typ="safe").load((ROOT / "params.yaml").read_text())["tracking"]["experiment"]
WAIT_S = 240  # ceiling for anything to happen on a loaded 2-core machine; never a pass condition
QUEUE_POLL_S = 4  # each `dvc queue status` is a ~1 s DVC process, on the cores the experiments train on
GIT_ENV = {
    "GIT_AUTHOR_NAME": "tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}
# Not copied: what a copy never runs. (The e2e copies get their own data and params.)
NOT_COPIED = ("tests/", "benchmarks/", "docs/", "dvc.lock", "metrics/eval.json")
SITE_CACHE_DIR: Path | None = None  # DVC_SITE_CACHE_DIR of the subprocesses, set by a session fixture


# ---- environment and commands ---------------------------------------------------------------------------


def env(**extra) -> dict[str, str]:
    """A fresh shell's environment with the venv first on PATH; no outer DVC/MLflow/git settings."""
    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "GIT_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    e.update(GIT_ENV)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PYTHONDONTWRITEBYTECODE="1",
        GIT_TERMINAL_PROMPT="0",
    )
    if SITE_CACHE_DIR:
        e["DVC_SITE_CACHE_DIR"] = str(SITE_CACHE_DIR)
    e.update(extra)
    return e


def run(
    args: list, cwd: Path, *, check: bool = True, timeout: float = 300, env_: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command; stdout and stderr together in .stdout. On an unexpected exit code fail with the output."""
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env_ or env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} (in {cwd}) exited {done.returncode}:\n{done.stdout}")
    return done


def dvc(cwd: Path, *args, **kw) -> subprocess.CompletedProcess:
    return run([BIN / "dvc", *args], cwd, **kw)


def git(cwd: Path, *args) -> str:
    return run(["git", *args], cwd).stdout


def dvc_json(cwd: Path, *args):
    """A `dvc ... --json` command's JSON (DVC may print warnings before it)."""
    out = dvc(cwd, *args, "--json").stdout
    start = min(i for i in (out.find("{"), out.find("[")) if i >= 0)
    return json.loads(out[start:])


def experiments(shown: list) -> list[dict]:
    """The experiments of `dvc exp show --json` output, each its newest rev (name, data or error)."""
    return [exp["revs"][0] for baseline in shown for exp in baseline.get("experiments") or []]


def ran_stages(output: str) -> list[str]:
    """Stages `dvc repro` / `dvc exp run` executed (not skipped, not restored from the run-cache)."""
    return [s for s in STAGES if f"Running stage '{s}'" in output]


# ---- params.yaml, read and written as DVC does ---------------------------------------------------------


def package_imports(path: Path) -> set[str]:
    """Every module a Python file imports, anywhere in it (function-level imports included); `from X import
    Y` counts module X.Y when there is one in src/, else X."""
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if is_module(submodule) else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def is_module(name: str) -> bool:
    """Whether src/ has module or package `name`."""
    path = ROOT / "src" / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def read_yaml(path: Path):
    return YAML(typ="safe").load(Path(path).read_text())


def write_yaml(path: Path, data) -> Path:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with open(path, "w") as f:
        yaml.dump(data, f)
    return Path(path)


def set_dotted(tree: dict, dotted: dict) -> dict:
    """Set keys given as {"train.lr": 0.1, ...} in a nested mapping; returns it."""
    for key, value in dotted.items():
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return tree


def read_params(root: Path) -> dict:
    return read_yaml(root / "params.yaml")


def set_params(root: Path, **dotted) -> None:
    """Change keys of a copy's params.yaml, e.g. set_params(root, **{"plot.dpi": 50})."""
    write_yaml(root / "params.yaml", set_dotted(read_yaml(root / "params.yaml"), dotted))


# ---- a copy of the project -----------------------------------------------------------------------------


def copy_working_tree(dest: Path) -> None:
    """The project's tracked and untracked-but-not-ignored files (so work in progress is what runs), without
    the tests, benchmarks, docs and the project's own results."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(NOT_COPIED):  # a deleted-but-tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def make_project(
    dest: Path,
    params: dict,
    extra_code: str = "",
    data: dict[str, bytes] | None = None,
    data_dir: str = "tinydata",
) -> Path:
    """A committed copy of the project: `extra_code` appended to its datasets module (a test dataset's
    registration), `data` written into `data_dir` (committed, so queued experiments see it), `params` as its
    params.yaml. Nothing run yet."""
    dest.mkdir(parents=True)
    copy_working_tree(dest)
    if extra_code:
        with open(dest / "src" / "mnist_softmax" / "core" / "datasets.py", "a") as f:
            f.write(extra_code)
    if data:
        (dest / data_dir).mkdir()
        for name, blob in data.items():
            (dest / data_dir / name).write_bytes(blob)
    write_yaml(dest / "params.yaml", params)
    git(dest, "init", "-q", "-b", "main")
    commit_all(dest, "copy of the project")
    return dest


def commit_all(cwd: Path, message: str) -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "--allow-empty", "-m", message)


def drop_store(root: Path) -> None:
    """Remove a copy's MLflow store (its experiment points at that copy's mlruns/ by absolute path)."""
    for name in ("mlflow.db", "mlflow.db.lock"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "mlruns", ignore_errors=True)


def clone_project(src: Path, dest: Path, *, fresh_store: bool = True) -> Path:
    """A byte copy of a copy (its git repo and DVC cache/run-cache included), by default without its store."""
    shutil.copytree(src, dest, symlinks=True)
    if fresh_store:
        drop_store(dest)
    return dest


def restore_baseline(root: Path) -> None:
    """Back to the committed state: params, dvc.lock and metrics from git, outputs from the DVC cache.
    (`git checkout -- .` is not enough: core.autostage has DVC stage its dvc.lock.)"""
    git(root, "reset", "-q", "--hard", "HEAD")
    dvc(root, "checkout", "--force")
    status = dvc_json(root, "status")
    assert status == {}, f"copy not back at its baseline: {status}"


# ---- DVC's queue ---------------------------------------------------------------------------------------


def start_queue(root: Path, jobs: int, log: Path, env_: dict | None = None) -> None:
    """`dvc queue start -j N`, output to `log` (outside the copy): the Celery workers it spawns inherit its
    stdout (and its environment), so with a pipe, waiting for the command would wait for the workers."""
    with open(log, "w") as out:
        done = subprocess.run(
            [str(BIN / "dvc"), "queue", "start", "-j", str(jobs)],
            cwd=root,
            env=env_ or env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert done.returncode == 0, log.read_text()


def wait_queue_done(root: Path, count: int, timeout: float = 600) -> str:
    """Poll `dvc queue status` until `count` experiments (all this copy ever queued) have ended, Success or
    Failed; returns the last table. "No row Queued or Running" is not enough: that check once
    returned while a task was still training."""
    deadline = time.monotonic() + timeout
    while True:
        table = dvc(root, "queue", "status").stdout
        ended = [line for line in table.splitlines()[1:] if line.split()[-1:] in (["Success"], ["Failed"])]
        if len(ended) >= count:
            return table
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(ended)} of {count} experiments ended after {timeout} s:\n{table}")
        time.sleep(QUEUE_POLL_S)


def stop_queue(root: Path, kill: bool = False) -> None:
    """Stop the Celery workers `dvc queue start` left; kill: end running experiments first."""
    dvc(root, "queue", "stop", *(["--kill"] if kill else []), check=False, timeout=60)


# ---- processes -----------------------------------------------------------------------------------------


def _sigint_not_ignored() -> None:
    """A shell starts a background job (`make test &`, nohup) with SIGINT ignored, and exec keeps an ignored
    signal ignored: DVC and its stages would never see the Ctrl-C a test sends. A handled signal is reset
    to its default in an exec'ed child, so handle it here the way Python does by default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Proc:
    """A started process (own session, so its whole tree can be killed) whose merged output is collected
    line by line in a thread; wait_for() blocks until a line matches."""

    def __init__(self, args, cwd, env_=None):
        _sigint_not_ignored()
        self.popen = subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            env=env_ or env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() at which each line arrived
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        assert self.popen.stdout is not None  # stdout=PIPE
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line)
                self.times.append(time.monotonic())
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
                    raise AssertionError(
                        f"process ended (rc {self.popen.poll()}) before a line matched"
                        f" {pattern!r}; output:\n{''.join(self.lines)}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matched {pattern!r} in {timeout} s; output:\n{''.join(self.lines)}")
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = WAIT_S) -> int:
        rc = self.popen.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill_tree(self):
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(30)


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
        if Path(where) != cwd or b"-m" not in argv or argv.index(b"-m") + 1 >= len(argv):
            continue
        mod = argv[argv.index(b"-m") + 1].decode(errors="replace")
        if (module is None and mod.startswith("pipeline.")) or mod == module:
            found.append(int(entry.name))
    return found


def wait_for_stage(module: str, cwd: Path, timeout: float = WAIT_S) -> int:
    """PID of the running `python -m <module>` whose working directory is `cwd`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in stage_pids(module, cwd):
            return pid
        time.sleep(0.02)
    raise AssertionError(f"no `python -m {module}` process in {cwd} within {timeout} s")


def kill_stages(cwd: Path) -> None:
    for pid in stage_pids(None, cwd):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- the MLflow store, through MlflowClient ------------------------------------------------------------


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def mlflow_client(uri_or_root):
    from mlflow.tracking import MlflowClient

    uri = uri_or_root if isinstance(uri_or_root, str) else store_uri(Path(uri_or_root))
    return MlflowClient(uri)


def runs(uri_or_root, experiment: str = EXPERIMENT) -> list:
    """Every MLflow run of the experiment, oldest first."""
    client = mlflow_client(uri_or_root)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


def metric_steps(uri_or_root, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(uri_or_root).get_metric_history(run_id, key))


def steps(uri_or_root, run_id: str, key: str = "train_loss") -> list[int]:
    return [step for step, _ in metric_steps(uri_or_root, run_id, key)]


# ---- a browser and the MLflow UI -------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")  # Debian's chromium, chromium-driver


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Chromium under selenium, its profile in `profile`. Every host name but 127.0.0.1 and localhost
    resolves to nothing, so no request leaves the machine; each request is in Chrome's performance log
    (`requested_urls`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "Debian's chromium and chromium-driver are not installed"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1000",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers on the network
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """The URLs the browser requested since the last call, its own chrome:// pages left out."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return [u for u in urls if not u.startswith("chrome")]


@contextlib.contextmanager
def recording_server():
    """An HTTP server on 127.0.0.1 that answers 200 to anything, as another program holding a port, or a proxy,
    might; yields its port and the headers of each request it got."""
    import http.server

    seen: list[dict] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PATCH = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def mlflow_ui(root: Path, log: Path):
    """`mlflow ui` on 127.0.0.1 in `root` with no store flags (it opens ./mlflow.db), one worker; yields its URL."""
    import urllib.request

    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [BIN / "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=root,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not come up (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
