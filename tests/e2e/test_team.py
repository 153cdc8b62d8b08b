"""Working as a team, for real on this machine: the stack of `python -m mnist_softmax.team.stack` (a temporary
PostgreSQL cluster run as the `postgres` user, `mlflow server` with basic auth serving the artifacts from the
stack's folder, all on 127.0.0.1), two clones of the project with a bare git remote and the stack's DVC
remote, the model registry and `mlflow models serve`, the server's UI in headless Chromium, and what another
account on the machine can see or do."""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mnist_softmax.core.preprocess import to_pixels
from mnist_softmax.team.services import ServiceRecord, StackError, free_port, identity, listens, wait_for
from mnist_softmax.team.stack import Stack
from tests import harness as P
from tests.e2e.conftest import ADMIN_PASSWORD, ALICE, BOB, client_env, team_clone

NOT_SECRET = {"postgres.port", "services.json", "users.json"}  # every other file of the state folder is 0600

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("stack"),  # one team stack for these and test_sweeps.py
    pytest.mark.skipif(shutil.which("initdb") is None, reason="PostgreSQL not installed"),
]


LRS = (0.02, 0.03, 0.04)


@pytest.fixture(scope="module")
def clones(stack, template, e2e_dir):
    """Clone A (from the tiny template) with the team's DVC remote, pushed to a bare git remote; it queues the
    sweep against the server (`dvc queue start -j 2`) and pushes its experiments with the run-cache."""
    bare, a = team_clone(stack, template, e2e_dir, "team")
    env = client_env(stack)
    P.dvc(a, "exp", "run", "--queue", "-S", "train.lr=" + ",".join(map(str, LRS)), env_=env)
    t0 = time.monotonic()
    P.start_queue(a, 2, e2e_dir / "team-queue.log", env_=env)
    table = P.wait_queue_done(a, len(LRS), timeout=900)
    P.stop_queue(a)
    names = {
        rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]: rev["name"]
        for rev in P.experiments(P.dvc_json(a, "exp", "show"))
    }
    assert set(names) >= set(LRS), table
    for lr in LRS:
        P.dvc(a, "exp", "push", "--run-cache", "origin", names[lr], env_=env)
    b = e2e_dir / "team-b"
    P.run(["git", "clone", "-q", str(bare), b], e2e_dir)
    return {
        "a": a,
        "b": b,
        "names": {lr: names[lr] for lr in LRS},
        "sweep_s": time.monotonic() - t0,
        "bare": bare,
    }


def server_runs(stack, client):
    exp = client.get_experiment_by_name(P.EXPERIMENT)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=100)


def test_queued_sweep_lands_on_the_server_readable_by_a_second_user(stack, clones, bob):
    runs = {r.info.run_name: r for r in server_runs(stack, bob)}
    for lr, name in clones["names"].items():
        run = runs[name]
        assert run.info.status == "FINISHED" and run.data.params["train.lr"] == str(lr)
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert [m.step for m in bob.get_metric_history(run.info.run_id, key)] == [1, 2, 3], (
                name,
                key,
            )
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: no bucket credentials
        assert {a.path for a in bob.list_artifacts(run.info.run_id, "plots")} == {
            "plots/confusion_matrix.png",
            "plots/loss_accuracy.png",
            "plots/misclassified.png",
        }
        local = bob.download_artifacts(run.info.run_id, "evaluation/eval.json")
        assert json.loads(Path(local).read_text())["test_accuracy"] == run.data.metrics["final_test_accuracy"]
        assert run.data.tags["mlflow.user"] == ALICE[0]


def test_no_credentials_is_401_and_a_reader_cannot_log(stack, clones, bob):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10)
    assert err.value.code == 401
    from mlflow.exceptions import MlflowException

    exp = bob.get_experiment_by_name(P.EXPERIMENT)
    with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied|403"):
        bob.create_run(exp.experiment_id)


def test_a_second_clone_pulls_an_experiment_and_reuses_its_training(stack, clones, bob):
    b, lr = clones["b"], LRS[1]
    name = clones["names"][lr]
    env = client_env(stack)
    P.dvc(b, "exp", "pull", "--run-cache", "origin", name, env_=env)
    pulled = [rev for rev in P.experiments(P.dvc_json(b, "exp", "show")) if rev["name"] == name]
    assert pulled and pulled[0]["data"]["metrics"]["metrics/eval.json"]["data"]["test_accuracy"] >= 0.0
    P.dvc(b, "exp", "apply", name, env_=env)
    P.dvc(b, "pull", env_=env)
    [run] = [r for r in server_runs(stack, bob) if r.info.run_name == name]
    digest = hashlib.sha256((b / "models" / "model.pt").read_bytes()).hexdigest()
    assert digest == run.data.tags["model_sha256"]  # B has A's model without training

    P.git(b, "reset", "-q", "--hard", "HEAD")
    P.dvc(b, "checkout", "--force", env_=env, check=False)
    before = len(server_runs(stack, bob))
    out = P.dvc(b, "exp", "run", "--pull", "-S", f"train.lr={lr}", env_=env).stdout
    assert "Stage 'train' is cached - skipping run" in out and "Running stage 'train'" not in out, out
    assert len(server_runs(stack, bob)) == before  # no new run


FIRST_RUN = ["python", "-m", "pipeline.train", "--params", "params.yaml", "--data", "data/prepared"]


def test_four_first_runs_at_once_on_a_fresh_experiment_all_land_in_it(stack, clones, bob, e2e_dir):
    """Four trainings start together where the project's experiment does not exist yet: all four runs are
    in it, none in Default (MLflow answers RESOURCE_ALREADY_EXISTS to all creators but one)."""
    root = P.clone_project(clones["a"], e2e_dir / "team-race")
    experiment = f"race-{os.getpid()}"
    P.set_params(root, **{"tracking.experiment": experiment, "train.epochs": 1, "tracking.log_model": False})
    assert P.dvc(root, "repro", "preprocess", env_=client_env(stack)).returncode == 0
    env = client_env(stack, PYTHONPATH="src")
    procs = [
        P.Proc([*FIRST_RUN, "--model", f"models/m{i}.pt", "--history", f"metrics/h{i}.json"], root, env)
        for i in range(4)
    ]
    for proc in procs:
        assert proc.wait() == 0, proc.output
    exp = bob.get_experiment_by_name(experiment)
    runs = bob.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert bob.search_runs(["0"]) == []


def test_promote_then_serve_the_champion(stack, clones, bob, tmp_path):
    a, name = clones["a"], clones["names"][LRS[2]]
    env = client_env(stack, PYTHONPATH="src")
    out = P.run(["python", "-m", "mnist_softmax.team.promote", name], a, env_=env).stdout
    assert "champion -> 1" in out, out
    port = free_port()
    serve = P.Proc(
        [
            P.BIN / "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{P.EXPERIMENT}@champion",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "--env-manager",
            "local",
        ],
        tmp_path,
        env,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert serve.popen.poll() is None and time.monotonic() < deadline, serve.output
                time.sleep(1)
        test = load_file(str(a / "data" / "prepared" / "test.safetensors"))
        norm = json.loads((a / "data" / "prepared" / "dataset.json").read_text())["normalize"]
        pixels = to_pixels(test["images"][:20], norm["mean"], norm["std"])  # as the IDX files hold them

        def invoke(rows):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                method="POST",
                data=json.dumps({"inputs": rows}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["predictions"]

        labels = np.array([row["label"] for row in invoke(pixels.tolist())])
        with pytest.raises(urllib.error.HTTPError) as refused:
            invoke((pixels[:2] / 255).reshape(2, 28, 28, 1).tolist())
        answer = refused.value.read().decode()
    finally:
        serve.kill_tree()
    assert (labels == test["labels"][:20]).mean() >= 0.9  # the right digits
    assert refused.value.code == 400 and "expected pixels 0-255" in answer, answer
    version = bob.get_model_version_by_alias(P.EXPERIMENT, "champion")
    [run] = [r for r in server_runs(stack, bob) if r.info.run_name == name]
    assert version.run_id == run.info.run_id


def test_promote_works_on_the_sqlite_default(repro_project, e2e_dir):
    root = P.clone_project(repro_project.root, e2e_dir / "promote-sqlite", fresh_store=False)
    [run] = [r for r in P.runs(root) if r.data.tags.get("model_sha256")][:1]
    name = run.info.run_name  # MLflow named the workspace's run; an experiment's run has the experiment's name
    out = P.run(["python", "-m", "mnist_softmax.team.promote", name], root, env_=P.env(PYTHONPATH="src")).stdout
    assert "champion -> 1" in out, out
    version = P.mlflow_client(root).get_model_version_by_alias(P.EXPERIMENT, "champion")
    assert version.run_id == run.info.run_id


def wait_for_text(driver, needles, timeout: float = 90) -> str:
    """The page's text once it holds every needle (the UI renders bit by bit); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        text = driver.execute_script("return document.body.textContent")
        if all(n in text for n in needles):
            return text
        assert time.monotonic() < deadline, f"{needles} not all on the page: {text[:2000]}"
        time.sleep(1)


@pytest.mark.skipif(not (P.CHROMIUM and P.CHROMEDRIVER), reason="Debian's chromium and chromium-driver not installed")
def test_the_ui_shows_the_sweep_to_the_second_user(stack, clones, bob, tmp_path):
    """Headless Chromium, as bob, opens the server's compare view of the sweep and sees each run with its
    test accuracy; the screenshot goes to $MNIST_SOFTMAX_SCREENSHOT when set (docs/mlflow_compare.png)."""
    from base64 import b64encode

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    runs = [r for r in server_runs(stack, bob) if r.info.run_name in clones["names"].values()]
    with P.chromium(tmp_path / "chrome") as driver:
        token = b64encode(f"{BOB[0]}:{BOB[1]}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        ids = json.dumps([r.info.run_id for r in runs])
        driver.get(f"{stack.url}/#/compare-runs?runs={ids}&experiments={json.dumps([runs[0].info.experiment_id])}")
        wait_for_text(driver, [r.info.run_name for r in runs])
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):  # the assistant panel
            close.click()
        # the plot: each run's learning rate against its final test accuracy
        driver.find_element(By.XPATH, "//button[contains(., 'Clear All')]").click()
        for box, choice in zip(
            driver.find_elements(By.CSS_SELECTOR, "input[role='combobox']"),
            ("train.lr", "final_test_accuracy"),
        ):
            box.click()
            box.send_keys(choice)
            time.sleep(0.5)
            box.send_keys(Keys.ENTER, Keys.ESCAPE)
        text = wait_for_text(driver, ["final_test_accuracy"])
        time.sleep(1)
        shot = tmp_path / "compare.png"
        driver.save_screenshot(str(shot))
    if os.environ.get("MNIST_SOFTMAX_SCREENSHOT"):
        shutil.copy(shot, os.environ["MNIST_SOFTMAX_SCREENSHOT"])
    assert all(r.info.run_name in text for r in runs)
    for run in runs:
        assert f"{run.data.metrics['final_test_accuracy']:g}" in text  # in the compare table


# ---- what another account on the machine can see or do (the stack's own user is root here) ---------------


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args], capture_output=True, text=True
    )


def stack_secrets(stack) -> list[str]:
    folder = stack.folder
    return [
        ADMIN_PASSWORD,
        ALICE[1],
        BOB[1],
        (folder / "flask.secret").read_text(),
        *(p.read_text() for p in folder.glob("db-*.password")),
    ]


def test_no_secret_on_a_command_line_nor_in_a_file_others_can_read(stack):
    """`ps` as another account shows none of the stack's secrets; its state folder and every secret in it are
    its owner's (the postgres user's group may only pass through to its cluster)."""
    secrets = stack_secrets(stack)
    assert len(secrets) == 8 and all(secrets)  # admin, 2 users, flask, 4 database roles
    ps = as_nobody("ps", "-eo", "args")
    assert ps.returncode == 0 and "mlflow server" in ps.stdout, ps.stderr
    assert [s for s in secrets if s in ps.stdout] == []
    if os.geteuid() == 0:  # PostgreSQL runs as the postgres user, whose group may pass through
        assert stat.S_IMODE(stack.folder.stat().st_mode) == 0o710
        assert stack.folder.stat().st_gid == grp.getgrnam("postgres").gr_gid
    else:
        assert stat.S_IMODE(stack.folder.stat().st_mode) == 0o700
    files = [p for p in stack.folder.iterdir() if p.is_file() and p.name not in NOT_SECRET]
    assert {"basic_auth.ini", "flask.secret", "db-optuna.password", "mlflow.log"} <= {p.name for p in files}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    for path in [stack.folder, *files]:
        assert as_nobody("cat", str(path)).returncode != 0, path


def test_secrets_are_0600_from_their_first_byte(tmp_path, monkeypatch):
    """write_secret's file already has mode 0600 when its first byte is written, whatever the umask."""
    from mnist_softmax.team import services

    modes = []
    real_write = os.write

    def write(fd, data):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(services.os, "write", write)
    old = os.umask(0)
    try:
        services.write_secret(tmp_path / "s", "secret")
    finally:
        os.umask(old)
    assert modes == [0o600] and (tmp_path / "s").read_text() == "secret"


def postgres_connect(uri: str, **override):
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    args = {"host": url.host, "port": url.port, "user": url.username, "password": url.password, "dbname": url.database}
    return psycopg2.connect(**{**args, **override})


def test_every_database_role_reaches_its_own_database_only_and_is_no_superuser(stack):
    """A sweep worker's URL (the optuna role) cannot run OS commands, nor open MLflow's users or runs; no role
    the stack hands out is a superuser."""
    import psycopg2

    roles = {db: stack.postgres.uri(db) for db in ("mlflow", "mlflow_auth", "optuna")}
    for db, uri in roles.items():
        con = postgres_connect(uri)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
                assert cur.fetchone() == (False, False, False), db
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        finally:
            con.close()
        for other in {"mlflow", "mlflow_auth", "optuna", "postgres"} - {db}:
            with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                postgres_connect(uri, dbname=other).close()
    config = (stack.folder / "basic_auth.ini").read_text()
    assert f"//mlflow_auth:{stack.postgres.password('mlflow_auth')}@" in config  # MLflow's users: their role


def test_the_default_store_checks_credentials(stack, clones, bob):
    """Without --s3-endpoint or --demo-s3 nothing listens that answers without credentials: the artifacts are
    in the state folder, served by MLflow behind basic auth, and the DVC remote is a folder beside them; no
    other account can read or change either."""
    assert stack.s3_endpoint is None and len(stack.procs) == 1  # the MLflow server only: no S3 server
    [run] = [r for r in server_runs(stack, bob) if r.info.run_name == clones["names"][LRS[0]]]
    experiment_id, run_id = run.info.experiment_id, run.info.run_id
    stored = stack.folder / "artifacts" / experiment_id / run_id / "artifacts" / "evaluation" / "eval.json"
    assert stored.is_file()
    path = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/evaluation/eval.json"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{stack.url}{path}", timeout=10)
    assert anonymous.value.code == 401
    with pytest.raises(StackError, match="HTTP 403"):  # a reader cannot overwrite it
        stack.api("PUT", path, {"accuracy": 1.0}, user=BOB[0], password=BOB[1])
    assert json.loads(stored.read_text())["test_accuracy"] == run.data.metrics["final_test_accuracy"]
    dvc = Path(stack.dvc_remote)
    assert any(p.is_file() for p in dvc.rglob("*"))  # the clones pushed there
    for target in (stored, dvc):
        assert as_nobody("ls", str(target)).returncode != 0, target
        assert as_nobody("touch", str(target / "x" if target.is_dir() else target)).returncode != 0, target


@pytest.fixture
def recorder():
    """(port, headers of each request) of a server on 127.0.0.1 that answers anything."""
    with P.recording_server() as recorded:
        yield recorded


def test_credentials_go_only_to_a_listener_of_the_stacks_own_server(stack, recorder, tmp_path):
    """Another program that holds the port and answers /health gets no credential: the stack's server process
    (here one that listens nowhere) does not hold the listening socket, so the start is refused."""
    port, seen = recorder
    other = Stack(tmp_path, ADMIN_PASSWORD, mlflow_port=port)
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with pytest.raises(StackError, match="another program answers"):
            other._wait_for_own_server(server, tmp_path / "mlflow.log")
    finally:
        server.kill()
        server.wait()
    assert seen and [h for h in seen if "Authorization" in h] == []  # /health only
    assert listens(stack.procs[-1].pid, stack.mlflow_port)  # the real server holds its port


def test_passwords_never_go_to_a_proxy(stack, recorder, monkeypatch):
    """http_proxy set: the stack's calls of its own server still go straight to it."""
    port, seen = recorder
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener would read the proxy afresh
    assert stack.api("GET", f"/api/2.0/mlflow/users/get?username={ALICE[0]}")["user"]["username"] == ALICE[0]
    assert seen == []


def test_another_admin_password_is_named_as_such(stack):
    stack.check_admin()
    other = dataclasses.replace(stack, admin_password="another-admin-password")
    with pytest.raises(StackError, match="MLFLOW_AUTH_ADMIN_PASSWORD differs from the admin password"):
        other.check_admin()


def test_a_service_that_ended_is_named(stack, tmp_path):
    assert stack.dead() is None
    other = Stack(tmp_path, ADMIN_PASSWORD)
    proc = subprocess.Popen(["sh", "-c", "exit 3"], start_new_session=True)
    other.procs.append(proc)
    other.groups["the MLflow server"] = identity(proc.pid)
    proc.wait()
    assert other.dead() == f"the MLflow server exited (exit code 3); its log is in {other.folder}"
    other.groups.clear()
    other.postmaster = identity(os.getpid())  # a postmaster that is not the cluster's
    assert (other.dead() or "").startswith("PostgreSQL exited")


def test_a_service_that_does_not_come_up_is_one_line(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("starting\n" * 200 + "Traceback (most recent call last):\n  ...\nOSError: the reason\n")
    proc = subprocess.Popen(["sh", "-c", "exit 2"])
    proc.wait()
    with pytest.raises(StackError) as refused:
        wait_for(f"http://127.0.0.1:{free_port()}/health", proc, "the server", log)
    message = str(refused.value)
    assert "\n" not in message and message.endswith(f"see its log {log}: OSError: the reason"), message


def test_a_restart_stops_only_the_recorded_process_groups(tmp_path):
    """A recorded group id whose leader is not the recorded process (its pid was reused) is left alone."""
    record = ServiceRecord(tmp_path / "services.json")
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pid, start = identity(other.pid)
        record.save({"the MLflow server": [pid, start - 1]})
        record.stop_survivors(print)
        assert other.poll() is None
        record.save({"the MLflow server": [pid, start]})
        record.stop_survivors(print)
        assert other.wait(30) == -15  # SIGTERM
    finally:
        other.kill()
        other.wait()
