"""Files are complete, readable by others as the umask allows, cleaned up, and a full disk is a clear error:
real `dvc repro` runs under two umasks, real processes killed mid-write, a real full file system (tmpfs)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mnist_softmax.fileio import atomic_dir
from tests import harness as H


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path, rels) -> dict[str, int]:
    return {rel: stat.S_IMODE((root / rel).stat().st_mode) for rel in rels}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_get_the_modes_the_umask_gives(project, mask, file_mode, dir_mode):
    """Every output and artifact as readable as the umask lets any new file be: a teammate, or an `mlflow
    server` running as another user, can read them (before: 0600 files and 0700 folders whatever the umask)."""
    project.params(**{"train.epochs": 1})
    with umask(mask):
        done = project.dvc("repro", "-f")
    assert done.returncode == 0, done.stdout
    files = [
        "data/raw/train-images-idx3-ubyte",
        "data/prepared/train.safetensors",
        "data/prepared/dataset.json",
        "models/model.pt",
        "metrics/train_history.json",
        "metrics/eval.json",
        "metrics/predictions.csv",
        "plots/loss_accuracy.png",
        ".mlflow-run.json",
    ]
    assert modes(project.path, files) == {f: file_mode for f in files}
    folders = ["data/raw", "data/prepared", "plots"]
    assert modes(project.path, folders) == {f: dir_mode for f in folders}
    (run,) = project.runs()[-1:]
    artifact_root = Path(run.info.artifact_uri.removeprefix("file://"))
    logged = [p for p in artifact_root.rglob("*") if p.is_file()]
    assert logged and {stat.S_IMODE(p.stat().st_mode) for p in logged} == {file_mode}


def kill_when(proc_pid: int, appeared) -> None:
    """SIGKILL the process as soon as `appeared()` is true (it is writing then)."""
    deadline = time.monotonic() + H.WAIT_S
    while not appeared():
        assert time.monotonic() < deadline, "what the test waits for never appeared"
        time.sleep(0.001)
    os.kill(proc_pid, signal.SIGKILL)


def test_a_killed_stage_leaves_nothing_in_git_status_and_its_next_run_cleans_up(project):
    """plot kill -9'ed while it draws into its staging folder, a writer kill -9'ed inside the metrics folder:
    git status shows nothing, and the next run of each stage removes what they left."""
    project.params(**{"train.epochs": 1})
    assert project.dvc("repro").returncode == 0
    H.commit_all(project.path, "results")
    project.params(**{"train.epochs": 1, "plot.dpi": 600})  # slow drawing: the staging folder lives a while
    plot = project.start("dvc", "repro", "plot")
    pid = project.stage_pid("pipeline.plot")
    kill_when(pid, lambda: any(project.path.glob(".plots.staging-*/*.png")))
    plot.wait()
    writer = subprocess.Popen(
        [
            H.BIN / "python",
            "-c",
            "import sys; from mnist_softmax.fileio import write_json_atomic\n"
            "while True: write_json_atomic(sys.argv[1], list(range(2_000_000)))",
            project.path / "metrics" / "eval.json",
        ],
        cwd=project.path,
        env=H.env(PYTHONPATH="src"),
    )
    kill_when(writer.pid, lambda: any((project.path / "metrics").glob(".eval.json.*.tmp")))
    writer.wait()
    left = [
        *project.path.glob(".plots.staging-*"),
        *(project.path / "metrics").glob(".eval.json.*.tmp"),
    ]
    assert len(left) == 2, left
    assert H.git(project.path, "status", "--porcelain", "--untracked-files=all").strip() in (
        "",
        "M params.yaml",
    )

    project.params(**{"train.epochs": 1, "plot.dpi": 41})
    evaluate = project.dvc("repro", "--single-item", "--force", "evaluate")  # the next run of each stage
    plot = project.dvc("repro", "plot")
    assert "Running stage 'evaluate'" in evaluate.stdout and "Running stage 'plot'" in plot.stdout, plot.stdout
    assert [p for p in left if p.exists()] == []


def test_replacing_an_output_folder_never_leaves_it_missing(tmp_path):
    """A watcher looks for the folder without pause while it is replaced 200 times: it is always there."""
    target = tmp_path / "out"
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if not target.exists():
                missing.append(time.monotonic())

    with atomic_dir(target) as staging:
        (staging / "v").write_text("0")
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 201):
            with atomic_dir(target) as staging:
                (staging / "v").write_text(str(i))
    finally:
        stop.set()
        watcher.join()
    assert missing == [] and (target / "v").read_text() == "200"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture
def full_disk(tmp_path):
    """A real 2 MiB tmpfs, filled up; skipped where this machine cannot mount one."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        with open(mount / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(64 << 10))
                f.flush()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def train_argv(**paths) -> list[str]:
    argv = {
        "--params": "params.yaml",
        "--data": "data/prepared",
        "--model": "models/model.pt",
        "--history": "metrics/train_history.json",
        "--checkpoint": ".checkpoints/train.pt",
        "--run-file": ".mlflow-run.json",
        **paths,
    }
    return ["python", "-m", "pipeline.train", *[str(x) for kv in argv.items() for x in kv]]


@pytest.mark.parametrize("where", ["checkpoint", "history", "artifact"])
def test_a_full_disk_is_a_clear_error_and_a_failed_run(project, full_disk, tmp_path, where):
    """No space left while writing the checkpoint, the history or the run's artifacts: one line saying what
    could not be written, exit 1, the run FAILED with that reason, nothing half-written under its name."""
    project.params(**{"train.epochs": 2, "train.checkpoint": where == "checkpoint"})
    env, uri = H.env(PYTHONPATH="src"), H.store_uri(project.path)
    paths = {}
    if where == "checkpoint":
        paths["--checkpoint"] = full_disk / "train.pt"
    elif where == "history":
        paths["--history"] = full_disk / "history.json"
    else:  # a store whose artifact folder is on the full disk
        uri = f"sqlite:///{tmp_path / 'store.db'}"
        H.mlflow_client(uri).create_experiment(H.EXPERIMENT, artifact_location=(full_disk / "mlruns").as_uri())
        env["MLFLOW_TRACKING_URI"] = uri
    done = project.run(*train_argv(**paths), env_=env)
    assert done.returncode == 1, done.stdout
    expected = {
        "checkpoint": f"{full_disk / 'train.pt'}",
        "history": f"{full_disk / 'history.json'}",
        "artifact": "the run's artifact weights/model.pt",
    }[where]
    line = f"no space left on the device while writing {expected}"
    assert f"train: error: {line}" in done.stdout and "Traceback" not in done.stdout, done.stdout
    (run,) = H.runs(uri)[-1:]
    assert run.info.status == "FAILED" and line in run.data.tags["pipeline.end_reason"]
    if where != "artifact":  # no temp file, no half-written file under the output's name
        assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
