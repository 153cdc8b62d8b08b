"""Sweep workers under faults, for real: `python -m mnist_softmax.team.sweep` processes on an Optuna SQLite
storage and a SQLite MLflow store. Refusals before any trial run in a bare folder (no training: a trial
that did start would fail at once, `dvc exp run` finding no DVC project); a worker paused mid-trial
(SIGSTOP, SIGCONT) and a trial whose worker died before its first heartbeat each run one tiny training in a
copy of the tiny template. The heartbeat is 1 s (grace 4 s) through the worker's --heartbeat."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests import harness as P

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

SWEEP = """study: {study}
objective: {{metric: {metric}, direction: {direction}}}
trials: {trials}
space:
  train.lr: {{type: float, low: 0.01, high: {high}, log: true}}
  model.activation: {{type: categorical, choices: [relu]}}
"""


def sweep_text(study, metric="test_loss", direction="minimize", trials=1, high=0.2):
    return SWEEP.format(study=study, metric=metric, direction=direction, trials=trials, high=high)


def worker(cwd: Path, sweep_file: str, *extra, **env) -> P.Proc:
    """A worker on the code of `cwd` (a copy registers the tiny dataset there), else of this project."""
    code = "src" if (cwd / "src").is_dir() else str(P.ROOT / "src")
    return P.Proc(
        ["python", "-m", "mnist_softmax.team.sweep", sweep_file, "--heartbeat", "1", *extra],
        cwd,
        P.env(PYTHONPATH=code, **env),
    )


def bare_folder(tmp_path: Path) -> Path:
    """params.yaml and nothing else: the worker's checks run, any trial fails at once."""
    shutil.copyfile(P.ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def load_study(root: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def experiment_processes(root: Path) -> list[str]:
    """Command lines of the running processes of a trial's experiment (its guard, `dvc exp run`, stages) whose
    working directory is in `root` (a `--temp` experiment runs in a folder under .dvc/tmp)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            where = Path(os.readlink(entry / "cwd"))
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or gone
            continue
        if where.is_relative_to(root) and any(s in line for s in ("sweep_trial", "exp run", "-m pipeline.")):
            found.append(line)
    return found


def study_runs(root: Path, study: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(P.store_uri(root))
    exp = client.get_experiment_by_name(P.EXPERIMENT)
    assert exp is not None, "no MLflow experiment: the worker never opened the store"
    return client.search_runs([exp.experiment_id], f"tags.`sweep.study` = '{study}'", max_results=100)


def parent_run(root: Path, study: str):
    [parent] = [r for r in study_runs(root, study) if "sweep.trial" not in r.data.tags]
    return parent


# ---- refused before any trial ----------------------------------------------------------------------------


def test_a_worker_with_another_sweep_file_refuses_to_join_and_the_last_worker_fails_the_study_run(tmp_path):
    """The first worker creates the study; its trials all fail (no DVC project here), so it stops after 3 and,
    no trial running, ends the study's MLflow run FAILED with the reason. A second worker whose sweep file
    has another direction, budget and range is refused, each difference named, and adds no trial."""
    from optuna.trial import TrialState

    root = bare_folder(tmp_path)
    (root / "sweep.yaml").write_text(sweep_text("joined", trials=5))
    first = worker(root, "sweep.yaml")
    assert first.wait(timeout=P.WAIT_S) == 1, first.output
    assert "3 trials in a row failed" in first.output
    parent = parent_run(root, "joined")
    assert parent.info.status == "FAILED"
    reason = parent.data.tags["pipeline.end_reason"]
    assert "0 of 5 trials done" in reason and "3 trials in a row failed" in reason, reason
    study = load_study(root, "joined")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["fail_reason"] for t in study.trials)

    (root / "other.yaml").write_text(sweep_text("joined", direction="maximize", trials=6, high=0.3))
    second = worker(root, "other.yaml", "--heartbeat", "2", "--set", "train.epochs=2")
    assert second.wait(timeout=P.WAIT_S) == 1, second.output
    out = second.output
    assert "study joined runs another sweep file or other worker settings" in out, out
    assert 'objective.direction: the study\'s is "minimize", this worker\'s "maximize"' in out, out
    assert "trials: the study's is 5, this worker's 6" in out, out
    assert "space.train.lr.high: the study's is 0.2, this worker's 0.3" in out, out
    assert "--heartbeat: the study's is 1, this worker's 2" in out, out
    assert "--set: the study's is [], this worker's [\"train.epochs=2\"]" in out, out
    assert "sweep: trial" not in out and "Traceback" not in out
    assert len(load_study(root, "joined").trials) == 3


def test_values_that_dvc_would_write_differently_are_refused_before_any_trial(tmp_path):
    """A choice that OmegaConf would resolve from the worker's environment, and --set values that Hydra reads
    as a sweep or an interpolation: refused, named as written, the secret nowhere in the output."""
    root = bare_folder(tmp_path)
    secret = "s3cr3t-value-of-the-worker"
    (root / "sweep.yaml").write_text(
        sweep_text("values") + "  tracking.experiment: {type: categorical, choices: ['${oc.env:SWEEP_SECRET}']}\n"
    )
    refused = worker(root, "sweep.yaml", SWEEP_SECRET=secret)
    assert refused.wait(timeout=P.WAIT_S) == 1, refused.output
    assert "space.tracking.experiment = '${oc.env:SWEEP_SECRET}': -S tracking.experiment=" in refused.output
    assert "DVC would write another value into params.yaml" in refused.output

    (root / "sweep.yaml").write_text(sweep_text("values"))
    for setting, says in [
        ("train.threads=1,2", "a list of values (a Hydra sweep)"),
        ("tracking.experiment=${oc.env:SWEEP_SECRET}", "DVC would write another value into params.yaml"),
        ("train.lr='0.1'", "train.lr = '0.1': Input should be a valid number"),
    ]:
        done = worker(root, "sweep.yaml", "--set", setting, SWEEP_SECRET=secret)
        assert done.wait(timeout=P.WAIT_S) == 1, done.output
        assert says in done.output, done.output
        assert secret not in done.output and "sweep: trial" not in done.output
    done = worker(root, "sweep.yaml", "--storage", f"postgresql://optuna:{secret}@127.0.0.1:9/optuna")
    assert done.wait(timeout=P.WAIT_S) == 1, done.output
    assert "--storage: the URL holds a password" in done.output and "$OPTUNA_STORAGE" in done.output, done.output
    assert secret not in done.output
    assert not (root / "optuna.db").exists()  # refused before the study was opened


def test_an_objective_the_evaluate_stage_does_not_write_is_refused_before_any_trial(tmp_path):
    root = bare_folder(tmp_path)
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps({"test_accuracy": 0.9, "test_loss": 0.3}))
    (root / "sweep.yaml").write_text(sweep_text("metric", metric="test_acc", direction="maximize"))
    done = worker(root, "sweep.yaml")
    assert done.wait(timeout=P.WAIT_S) == 1, done.output
    assert (
        "objective.metric: the evaluate stage writes metrics/eval.json with no metric test_acc"
        " (there is: test_accuracy, test_loss)" in done.output
    ), done.output
    assert "sweep: trial" not in done.output


def test_a_study_whose_first_start_failed_is_not_left_without_its_run(tmp_path, monkeypatch):
    """The study's MLflow experiment is deleted: the worker is refused with the restore command before the
    study exists. Then a study without a run and without trials, as a creator that died before opening it
    leaves: the next worker waits (up to --max-wait), creates it anew with its run and runs its trials."""
    import optuna
    from mlflow.tracking import MlflowClient

    from mnist_softmax.tracking.store import open_store

    root = bare_folder(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, experiment_id, _ = open_store(P.EXPERIMENT, root)
    client = MlflowClient(P.store_uri(root))
    client.delete_experiment(experiment_id)
    (root / "sweep.yaml").write_text(sweep_text("restart", trials=5))
    refused = worker(root, "sweep.yaml")
    assert refused.wait(timeout=P.WAIT_S) == 1, refused.output
    assert "is deleted in" in refused.output and "mlflow experiments restore" in refused.output, refused.output
    url = f"sqlite:///{root / 'optuna.db'}"
    assert not (root / "optuna.db").exists() or optuna.get_all_study_names(url) == []

    client.restore_experiment(experiment_id)
    optuna.create_study(storage=url, study_name="restart")  # its creator died before opening its run
    w = worker(root, "sweep.yaml", "--max-wait", "2")
    assert w.wait(timeout=P.WAIT_S) == 1, w.output  # its trials fail at once here (no DVC project)
    assert "sweep: waiting for the worker that created study restart" in w.output, w.output
    assert "study restart has no MLflow run and no trial after 2 s: created anew" in w.output
    assert "sweep: trial 0: restart-0 " in w.output and "3 trials in a row failed" in w.output
    assert parent_run(root, "restart").info.status == "FAILED"


def test_the_last_worker_waits_for_a_dead_workers_trial_to_end_the_study_run(tmp_path, monkeypatch):
    """Another worker was killed mid-trial, its heartbeat not yet stale: the worker that leaves fails it once
    stale (saying what it waits for), then ends the study's MLflow run with its reason."""
    from optuna.trial import TrialState

    from mnist_softmax.core.settings import read_yaml, validate
    from mnist_softmax.team.sweep import Worker
    from mnist_softmax.team.sweep_file import SweepFile, fingerprint
    from mnist_softmax.team.sweep_study import open_storage, open_study

    root = bare_folder(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", P.store_uri(root))
    (root / "sweep.yaml").write_text(sweep_text("left", trials=2))
    sweep = validate(SweepFile, read_yaml(root / "sweep.yaml"), "sweep.yaml")
    storage = open_storage(f"sqlite:///{root / 'optuna.db'}", 1)
    mine = fingerprint(sweep, 1, [], root / "params.yaml")
    study, parent = open_study(storage, sweep, P.EXPERIMENT, mine)
    dead = study.ask()
    storage.record_heartbeat(dead._trial_id)  # its worker beat, then was killed
    said: list[str] = []
    Worker(sweep, storage, study, parent, None, log=said.append).leave("FAILED", "the last reason")
    assert study.trials[0].state == TrialState.FAIL
    assert said[0].startswith("sweep: waiting up to 4 s for trial 0, running on other workers"), said
    run = parent_run(root, "left")
    assert run.info.status == "FAILED", run.data.tags
    assert "0 of 2 trials done; the last: the last reason" in run.data.tags["pipeline.end_reason"]


# ---- with a training -------------------------------------------------------------------------------------


def test_a_paused_worker_keeps_the_result_of_the_trial_failed_meanwhile(template, e2e_dir):
    """The worker is stopped (SIGSTOP, as Ctrl-Z or a suspended laptop) while its trial's experiment runs;
    another worker's look (fail_stale_trials) fails the trial once its heartbeat is stale. Continued, the
    worker says so, puts the result back into the study as a queued trial, takes it as done and completes
    the budget: nothing lost, no traceback, no second training."""
    import optuna
    from optuna.trial import TrialState

    root = P.clone_project(template, e2e_dir / "sweep-paused")
    (root / "sweep.yaml").write_text(sweep_text("paused"))
    w = worker(root, "sweep.yaml")
    try:
        w.wait_for(r"^sweep: trial 0: paused-0 ")
        os.kill(w.popen.pid, signal.SIGSTOP)
        storage = optuna.storages.RDBStorage(f"sqlite:///{root / 'optuna.db'}", heartbeat_interval=1, grace_period=4)
        study = optuna.load_study(study_name="paused", storage=storage)
        deadline = time.monotonic() + P.WAIT_S
        while study.trials[0].state == TrialState.RUNNING:  # as the next worker to look does
            assert time.monotonic() < deadline, "trial 0 never went stale"
            optuna.storages.fail_stale_trials(study)
            time.sleep(0.5)
        assert study.trials[0].state == TrialState.FAIL
    finally:
        if w.popen.poll() is None:
            os.kill(w.popen.pid, signal.SIGCONT)
    assert w.wait(timeout=P.WAIT_S) == 0, w.output
    assert "sweep: trial 0 was failed meanwhile by another worker" in w.output
    assert "Traceback" not in w.output

    trials = load_study(root, "paused").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    kept = trials[1]
    assert kept.user_attrs["result_of"] == 0 and kept.user_attrs["dvc_exp"] == "paused-0"
    assert kept.params == trials[0].params
    [shown] = [rev for rev in P.experiments(P.dvc_json(root, "exp", "show")) if rev["name"] == "paused-0"]
    assert kept.value == shown["data"]["metrics"]["metrics/eval.json"]["data"]["test_loss"]
    assert shown["data"]["params"]["params.yaml"]["data"]["train"]["lr"] == kept.params["train.lr"]
    assert len(P.experiments(P.dvc_json(root, "exp", "show"))) == 1  # one training

    parent = parent_run(root, "paused")
    [run] = [r for r in study_runs(root, "paused") if r.data.tags.get("sweep.trial") == "0"]
    assert run.info.status == "FINISHED" and run.data.tags["sweep.best"] == "true"
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.best_trial"] == "1"
    assert parent.data.tags["sweep.best_run"] == run.info.run_id


def test_a_trial_that_never_beat_is_failed_and_an_unreadable_metric_fails_only_its_trial(
    template, e2e_dir, monkeypatch
):
    """A RUNNING trial with no heartbeat at all (its worker died between creating it and its first beat):
    the worker waits for it, saying so, fails it after the grace period and runs its own trial. That
    trial's experiment lacks the objective (the clone's metrics file had it, the evaluate stage does not
    write it): the trial fails with the reason, the experiment is kept, and the worker goes on to the next
    trial; a SIGHUP (its terminal closed) then stops it and its trial's experiment, and ends the study's MLflow
    run KILLED with the reason."""
    import optuna
    from optuna.trial import TrialState

    from mnist_softmax.core.settings import read_yaml, validate
    from mnist_softmax.team.sweep_file import SweepFile, fingerprint
    from mnist_softmax.team.sweep_study import open_storage, open_study

    root = P.clone_project(template, e2e_dir / "sweep-orphan")
    eval_json = root / "metrics" / "eval.json"
    eval_json.write_text(json.dumps({**json.loads(eval_json.read_text()), "test_f1": 0.5}))
    (root / "sweep.yaml").write_text(sweep_text("orphan", metric="test_f1", direction="maximize"))
    url = f"sqlite:///{root / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", P.store_uri(root))
    sweep = validate(SweepFile, read_yaml(root / "sweep.yaml"), "sweep.yaml")  # the copy's params need its code
    mine = fingerprint(sweep, 1, [], root / "params.yaml")
    open_study(open_storage(url, 1), sweep, P.EXPERIMENT, mine)  # as the worker that created it did
    orphan = optuna.load_study(study_name="orphan", storage=url).ask()  # no heartbeat thread: never beats
    assert orphan.number == 0

    w = worker(root, "sweep.yaml")
    try:
        w.wait_for(r"^sweep: waiting for trial 0, running on other workers")
        w.wait_for(r"^sweep: trial 0 failed: no heartbeat at all for 4 s")
        w.wait_for(r"^sweep: trial 1: orphan-1 ")
        w.wait_for(r"^sweep: orphan-1: metrics/eval.json: no metric test_f1 \(there is: test_accuracy, test_loss\)")
        w.wait_for(r"^sweep: trial 2: orphan-2 ")  # it goes on
        deadline = time.monotonic() + P.WAIT_S
        while not experiment_processes(root):
            assert time.monotonic() < deadline and w.popen.poll() is None, w.output
            time.sleep(0.1)
        os.kill(w.popen.pid, signal.SIGHUP)  # its terminal closed
        assert w.wait() == 130, w.output
    finally:
        w.kill_tree()
    assert "KeyError" not in w.output
    assert experiment_processes(root) == []  # its trial's experiment was stopped with it

    trials = load_study(root, "orphan").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert "no heartbeat at all" in trials[0].user_attrs["fail_reason"]
    assert "no metric test_f1" in trials[1].user_attrs["fail_reason"]
    assert "orphan-1" in {rev["name"] for rev in P.experiments(P.dvc_json(root, "exp", "show"))}
    parent = parent_run(root, "orphan")
    assert parent.info.status == "KILLED", parent.data.tags
    assert "0 of 1 trials done" in parent.data.tags["pipeline.end_reason"]
    assert "interrupted (signal SIGHUP)" in parent.data.tags["pipeline.end_reason"]
