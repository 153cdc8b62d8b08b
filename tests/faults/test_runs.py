"""MLflow runs are never stuck and never wrong, provoked for real in a copy of the project: stage processes
killed with SIGKILL (alone, or their whole process group) and SIGINT, runs of a machine that went down, a
failed stage rerun, four processes writing one SQLite store at once, and a relative MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests import harness as H
from tests.faults.conftest import TRAIN_CMD

EPOCH_LINE = r"^epoch +{n}/{total} "


def test_kill_9_of_training_then_a_run_cache_restore_leaves_no_run_running(project):
    """The case that used to stay RUNNING for good: kill -9 of the train stage, then `dvc repro` with params
    DVC has a run-cache entry for, so that no training starts. The stage's guard ends the run by itself."""
    project.params(**{"train.epochs": 3})
    assert project.dvc("repro", "train").returncode == 0  # the run-cache entry
    project.params(**{"train.epochs": 200})
    repro = project.start("dvc", "repro", "train")
    repro.wait_for(EPOCH_LINE.format(n=2, total=200))
    pid = project.stage_pid("pipeline.train")
    os.kill(pid, signal.SIGKILL)
    repro.wait()
    killed = project.wait_for_status("FAILED")
    assert (
        killed.data.tags["pipeline.end_reason"]
        == f"process {pid} on {killed.data.tags['pipeline.host']} ended without closing the run (killed?)"
    )
    assert killed.data.tags["pipeline.stage.train"] == "FAILED"

    project.params(**{"train.epochs": 3})
    done = project.dvc("repro", "train")
    assert done.returncode == 0 and "Running stage 'train'" not in done.stdout, done.stdout  # restored
    assert [r.info.status for r in project.runs()] == ["FINISHED", "FAILED"]


def test_sigkill_of_the_whole_process_group_ends_the_run_failed(project):
    """`kill -9 -PGID` of `dvc repro` and its stage at once (as a terminal's or a job runner's kill does)."""
    project.params(**{"train.epochs": 200})
    repro = project.start("dvc", "repro", "train")
    repro.wait_for(EPOCH_LINE.format(n=2, total=200))
    os.killpg(repro.popen.pid, signal.SIGKILL)
    repro.wait()
    (run,) = [project.wait_for_status("FAILED")]
    assert "ended without closing the run" in run.data.tags["pipeline.end_reason"]


# A live process on a machine whose clock is 15 minutes behind: it renews its run's heartbeat with its own time.
LAGGING_BEATS = """
import sys, time
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
while True:
    client.set_tag(sys.argv[2], "pipeline.heartbeat", str(int((time.time() - 900) * 1000)))
    time.sleep(0.5)
"""
OPEN_STORE = f"from mnist_softmax.tracking.tracker import MlflowTracker; MlflowTracker({H.EXPERIMENT!r})"
STALE_S = 3  # MNIST_SOFTMAX_STALE_S in these tests


def watch(project) -> None:
    """What every stage does first: open the store, ending the runs whose process is gone."""
    done = project.run("python", "-c", OPEN_STORE, env_=H.env(MNIST_SOFTMAX_STALE_S=str(STALE_S)))
    assert done.returncode == 0, done.stdout


def test_runs_of_a_machine_that_went_down_are_ended_on_this_machine_s_clock_alone(project):
    """RUNNING runs of processes that are gone: one of another machine (another boot id) whose heartbeat never
    changes, a sweep's study run whose workers all vanished, one whose pid on this machine now belongs to
    another process (another start time); and one of a live process on a machine whose clock is 15 minutes
    behind. The first two are ended once this machine has seen their heartbeat unchanged for STALE_S, the
    third at once, the live one only once its process is suspended that long."""
    client = H.mlflow_client(project.path)
    exp = client.get_experiment_by_name(H.EXPERIMENT).experiment_id
    me = {
        k: v.strip()
        for k, v in (
            ("pipeline.boot_id", Path("/proc/sys/kernel/random/boot_id").read_text()),
            ("pipeline.pid_namespace", os.readlink("/proc/self/ns/pid")),
        )
    }
    elsewhere = {"pipeline.boot_id": "another-boot", "pipeline.pid_namespace": "x", "pipeline.host": "elsewhere"}
    gone = client.create_run(exp, tags={**elsewhere, "pipeline.pid": "4242", "pipeline.heartbeat": "1"})
    reused_pid = client.create_run(
        exp, tags={**me, "pipeline.host": "here", "pipeline.pid": str(os.getpid()), "pipeline.pid_start": "1"}
    )
    behind = client.create_run(exp, tags={**elsewhere, "pipeline.pid": "4343"})
    study = client.create_run(exp, tags={"pipeline.owner_stage": "sweep", "pipeline.heartbeat": "1"})  # its workers
    writer = project.start("python", "-c", LAGGING_BEATS, H.store_uri(project.path), behind.info.run_id)

    watch(project)
    status = {r.info.run_id: r for r in project.runs()}
    assert status[reused_pid.info.run_id].info.status == "FAILED"
    assert status[gone.info.run_id].info.status == "RUNNING"  # not seen long enough yet
    time.sleep(STALE_S + 1)
    watch(project)
    status = {r.info.run_id: r for r in project.runs()}
    reason = status[gone.info.run_id].data.tags["pipeline.end_reason"]
    assert status[gone.info.run_id].info.status == "FAILED"
    assert reason.startswith("no heartbeat from process 4242 on elsewhere for "), reason
    assert status[behind.info.run_id].info.status == "RUNNING"  # its clock is behind, its heartbeat alive
    assert status[study.info.run_id].info.status == "FAILED"
    assert (
        status[study.info.run_id]
        .data.tags["pipeline.end_reason"]
        .startswith("sweep: no heartbeat from the sweep process for ")
    )

    os.killpg(writer.popen.pid, signal.SIGSTOP)  # a suspended laptop
    try:
        watch(project)
        time.sleep(STALE_S + 1)
        watch(project)
    finally:
        os.killpg(writer.popen.pid, signal.SIGCONT)
    assert H.mlflow_client(project.path).get_run(behind.info.run_id).info.status == "FAILED"


def test_a_run_ended_while_its_process_was_suspended_is_running_again_when_it_wakes(project):
    """The train stage in its own pid namespace (to the store, another machine), suspended longer than
    STALE_S: another stage ends its run; woken, the stage makes it RUNNING again, saying so, and finishes it."""
    project.params(**{"train.epochs": 300})
    beats = H.env(PYTHONPATH="src", MNIST_SOFTMAX_HEARTBEAT_S="1")
    stage = project.start("unshare", "--pid", "--fork", *TRAIN_CMD, env_=beats)
    stage.wait_for(EPOCH_LINE.format(n=1, total=300))
    os.killpg(stage.popen.pid, signal.SIGSTOP)
    try:
        watch(project)
        time.sleep(STALE_S + 1)
        watch(project)
        ended = project.runs()[-1]
        assert ended.info.status == "FAILED" and "no heartbeat from process" in ended.data.tags["pipeline.end_reason"]
    finally:
        os.killpg(stage.popen.pid, signal.SIGCONT)
    assert stage.wait() == 0, stage.output
    assert f"mlflow: run {ended.info.run_id} was ended while this process was not heard from" in stage.output
    run = project.runs()[-1]
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.stage.train"] == "FINISHED"
    assert run.data.tags["pipeline.revived"] == ended.data.tags["pipeline.end_reason"]
    assert not run.data.tags.get("pipeline.end_reason")


def plot_argv(project) -> list[str]:
    return [
        "python",
        "-m",
        "pipeline.plot",
        "--params",
        "params.yaml",
        "--data",
        "data/prepared",
        "--model",
        "models/model.pt",
        "--history",
        "metrics/train_history.json",
        "--confusion",
        "metrics/confusion_matrix.json",
        "--predictions",
        "metrics/predictions.csv",
        "--out",
        "plots",
        "--run-file",
        ".mlflow-run.json",
    ]


def test_a_run_s_status_follows_the_latest_attempt_of_each_stage(project):
    """plot fails (its input damaged): the run is FAILED; plot succeeds again: FINISHED; plot is interrupted
    (a real SIGINT): KILLED; once more: FINISHED. Each stage's latest outcome is in pipeline.stage.<stage>."""
    project.params(**{"train.epochs": 2})
    assert project.dvc("repro").returncode == 0
    history = project.path / "metrics" / "train_history.json"
    good = history.read_bytes()
    env = H.env(PYTHONPATH="src")

    history.write_text("[{")
    assert project.run(*plot_argv(project), env_=env).returncode == 1
    run = project.runs()[-1]
    assert (run.info.status, run.data.tags["pipeline.stage.plot"]) == ("FAILED", "FAILED")
    assert run.data.tags["pipeline.end_reason"].startswith("plot: JSONDecodeError")

    history.write_bytes(good)
    assert project.run(*plot_argv(project), env_=env).returncode == 0
    run = project.runs()[-1]
    assert (run.info.status, run.data.tags["pipeline.stage.plot"]) == ("FINISHED", "FINISHED")

    plot = project.start(*plot_argv(project), env_=env)
    deadline = time.monotonic() + H.WAIT_S
    while project.runs()[-1].data.tags.get("pipeline.stage.plot") != "RUNNING":  # plot has attached
        assert plot.popen.poll() is None and time.monotonic() < deadline, plot.output
        time.sleep(0.02)
    os.kill(plot.popen.pid, signal.SIGSTOP)  # hold it where it is, so the Ctrl-C lands mid-stage
    os.kill(plot.popen.pid, signal.SIGINT)
    os.kill(plot.popen.pid, signal.SIGCONT)
    assert plot.wait() == 130 and "plot: interrupted (Ctrl-C)" in plot.output, plot.output
    run = project.runs()[-1]
    assert (run.info.status, run.data.tags["pipeline.stage.plot"]) == ("KILLED", "KILLED")

    assert project.run(*plot_argv(project), env_=env).returncode == 0
    run = project.runs()[-1]
    assert run.info.status == "FINISHED" and len(project.runs()) == 1
    assert {run.data.tags[f"pipeline.stage.{s}"] for s in H.STAGES[H.STAGES.index("train") :]} == {"FINISHED"}


WRITER = """
import os, sys, time
from pathlib import Path
from mnist_softmax.core.params import load_params
from mnist_softmax.tracking.tracker import MlflowTracker
gate = Path(sys.argv[1])
(gate / f"ready{os.getpid()}").touch()
while not (gate / "go").exists():
    time.sleep(0.001)
blob = gate / f"blob{os.getpid()}.bin"
blob.write_bytes(os.urandom(10 << 20))
tracker = MlflowTracker(load_params("params.yaml").tracking.experiment)
with tracker.training_run(f"writer-{os.getpid()}", {"p": "1"}, {}) as run:
    for step in range(1, 301):
        run.log_metrics({"train_loss": 1.0 / step, "test_accuracy": step / 300}, step=step)
    run.log_artifact(blob, "weights")
"""


def test_four_processes_write_one_existing_store_at_once(project, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    env = H.env(PYTHONPATH="src")
    writers = [project.start("python", "-c", WRITER, gate, env_=env) for _ in range(4)]
    deadline = time.monotonic() + H.WAIT_S
    while len(list(gate.glob("ready*"))) < 4:
        assert time.monotonic() < deadline and all(w.popen.poll() is None for w in writers)
        time.sleep(0.05)
    (gate / "go").touch()
    for w in writers:
        assert w.wait() == 0, w.output
        assert "database is locked" not in w.output and "Traceback" not in w.output, w.output
    runs = project.runs()
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    client = H.mlflow_client(project.path)
    for run in runs:
        assert project.steps(run) == list(range(1, 301))
        [artifact] = client.list_artifacts(run.info.run_id, "weights")
        assert artifact.file_size == 10 << 20


def test_a_relative_sqlite_uri_means_the_project_root_s_file(project):
    """MLFLOW_TRACKING_URI=sqlite:///mlflow.db for a queued experiment (which DVC runs in a temp copy): the
    run lands in the project root's mlflow.db, and no store or lock file appears anywhere else."""
    project.params(**{"train.epochs": 1})
    H.commit_all(project.path, "params")
    env = H.env(MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    assert project.dvc("exp", "run", "--queue", "-S", "train.lr=0.02", env_=env).returncode == 0
    done = project.dvc("queue", "start", "-j", "1", env_=env)
    assert done.returncode == 0, done.stdout
    H.wait_queue_done(project.path, 1, timeout=H.WAIT_S)
    H.stop_queue(project.path)
    [run] = [r for r in project.runs() if r.data.params.get("train.lr") == "0.02"]
    assert run.info.status == "FINISHED"
    assert not os.path.exists("/mlflow.db") and not os.path.exists("/mlflow.db.lock")
    assert [p for p in (project.path / ".dvc" / "tmp").rglob("mlflow.db*")] == []
