"""Faults during training, provoked for real on the tiny dataset in a copy of the project:
a diverging loss, SIGTERM / Ctrl-C / kill -9 of the real `python -m pipeline.train` process, and resuming from
the checkpoint after kill -9. MLflow state is read back with MlflowClient."""

from __future__ import annotations

import os
import re
import signal

from tests import harness as H

EPOCH_LINE = r"^epoch +{n}/{total} "


def run_cache(project) -> set[str]:
    root = project.path / ".dvc" / "cache" / "runs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def assert_contiguous(project, run, upto_at_least: int, below: int):
    got = project.steps(run)
    assert got == list(range(1, len(got) + 1)), f"steps not 1..n once each: {got}"
    assert upto_at_least <= len(got) < below, got
    return len(got)


def test_diverging_loss_stops_the_pipeline_and_caches_nothing(project):
    """train.lr = 1e6 makes the loss NaN in epoch 1: a clear message, run FAILED, evaluate never
    runs, dvc.lock and the run-cache unchanged; the next `dvc repro` with a sane lr trains again."""
    project.params(**{"train.epochs": 5, "train.lr": 1.0e6})
    lock, cache = project.read("dvc.lock"), run_cache(project)

    done = project.dvc("repro")
    assert done.returncode != 0, done.stdout
    assert re.search(
        r"train: error: epoch \d+: training loss is (nan|inf|-inf); the run diverged \(try a lower"
        r" train.lr\)",
        done.stdout,
    ), done.stdout
    assert "Traceback" not in done.stdout
    assert "Running stage 'train'" in done.stdout and "Running stage 'evaluate'" not in done.stdout
    assert project.read("dvc.lock") == lock and run_cache(project) == cache
    for out in ("models/model.pt", "metrics/train_history.json", "metrics/eval.json"):
        assert not (project.path / out).exists(), out
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["pipeline.end_reason"].startswith("NonFiniteLoss: epoch")

    project.params(**{"train.epochs": 5, "train.lr": 0.04})
    done = project.dvc("repro", "train")
    assert done.returncode == 0, done.stdout
    assert "Running stage 'train'" in done.stdout and "cached" not in done.stdout
    assert "train:" in project.read("dvc.lock").decode() and (project.path / "models/model.pt").is_file()
    failed, finished = project.runs()
    assert (failed.info.status, finished.info.status) == ("FAILED", "FINISHED")
    assert project.steps(finished) == [1, 2, 3, 4, 5]


def test_sigterm_and_ctrl_c_end_the_run_killed_with_its_epochs(project):
    """SIGTERM to the train process under `dvc repro`, then Ctrl-C (SIGINT to the whole foreground
    process group, as a terminal sends it): each run ends KILLED with the epochs logged so far; nothing
    is committed to dvc.lock."""
    total = 100
    project.params(**{"train.epochs": total})
    lock = project.read("dvc.lock")

    repro = project.start("dvc", "repro", "train")
    repro.wait_for(EPOCH_LINE.format(n=3, total=total))
    os.kill(project.stage_pid("pipeline.train"), signal.SIGTERM)
    assert repro.wait() != 0
    assert "train: interrupted (signal SIGTERM)" in repro.output, repro.output

    repro = project.start("dvc", "repro", "train")
    repro.wait_for(EPOCH_LINE.format(n=3, total=total))
    os.killpg(repro.popen.pid, signal.SIGINT)  # dvc and its stage: DVC ignores it while the stage runs
    assert repro.wait() != 0
    assert "train: interrupted (Ctrl-C)" in repro.output, repro.output

    first, second = project.runs()
    for run, why in ((first, "signal SIGTERM"), (second, "Ctrl-C")):
        assert run.info.status == "KILLED", run
        assert run.data.tags["pipeline.end_reason"] == "interrupted: " + why
        assert_contiguous(project, run, 3, total)
    assert project.read("dvc.lock") == lock and not (project.path / "models/model.pt").exists()


def test_kill_9_then_resume_gives_the_uninterrupted_result(project):
    """With train.checkpoint true, kill -9 of the train stage in epoch k; the next
    stage's guard marks its run FAILED; `dvc repro` resumes after the last completed epoch in a new run
    that holds steps 1..N once each, and ends with model and history byte-identical to an uninterrupted
    run (`dvc repro -f`)."""
    total, kill_at = 60, 4
    project.params(**{"train.epochs": total, "train.checkpoint": True, "train.lr": 0.01})
    ckpt = project.path / ".checkpoints" / "train.pt"

    repro = project.start("dvc", "repro", "train")
    repro.wait_for(EPOCH_LINE.format(n=kill_at, total=total))
    os.kill(project.stage_pid("pipeline.train"), signal.SIGKILL)
    assert repro.wait() != 0
    assert ckpt.is_file() and not (project.path / "models/model.pt").exists()
    orphan = project.wait_for_status("FAILED")  # the stage's guard ends it, before anything else runs

    done = project.dvc("repro", "train")
    assert done.returncode == 0, done.stdout
    m = re.search(
        r"train: resuming from checkpoint \.checkpoints/train\.pt: epochs 1\.\.(\d+) done"
        r" \(MLflow run (\w+)\)",
        done.stdout,
    )
    assert m, done.stdout
    resumed_at = int(m.group(1))
    assert kill_at <= resumed_at < total and m.group(2) == orphan.info.run_id
    first_epoch = re.search(r"^epoch +(\d+)/", done.stdout, re.M)
    assert first_epoch and int(first_epoch.group(1)) == resumed_at + 1, done.stdout
    assert not ckpt.exists()  # removed after success

    orphan, resumed = project.runs()
    assert orphan.info.status == "FAILED"
    assert "ended without closing the run" in orphan.data.tags["pipeline.end_reason"]
    assert resumed_at - 1 <= assert_contiguous(project, orphan, kill_at, total) <= resumed_at
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_run"] == orphan.info.run_id
    assert resumed.data.tags["resumed_from_epoch"] == str(resumed_at)
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert project.steps(resumed, key) == list(range(1, total + 1)), key
        before = H.metric_steps(project.path, orphan.info.run_id, key)
        assert before == H.metric_steps(project.path, resumed.info.run_id, key)[: len(before)]
    model, history = project.read("models/model.pt"), project.read("metrics/train_history.json")

    done = project.dvc("repro", "-f", "train")
    assert done.returncode == 0, done.stdout
    assert "resuming" not in done.stdout and re.search(r"^epoch +1/", done.stdout, re.M)
    assert project.read("models/model.pt") == model
    assert project.read("metrics/train_history.json") == history
