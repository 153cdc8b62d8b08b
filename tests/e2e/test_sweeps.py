"""Sweeps across machines, for real on this machine: Optuna studies on the team stack's PostgreSQL, two
workers (`python -m mnist_softmax.team.sweep`) in two clones that share a bare git remote and the S3 DVC remote,
every trial a `dvc exp run` with its MLflow run under the study's run; and a worker killed mid-trial."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from mnist_softmax.team.sweep_trial import STOP_S
from tests import harness as P
from tests.e2e.conftest import client_env, team_clone
from tests.e2e.test_sweep_faults import experiment_processes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("stack"),  # one team stack for these and test_team.py
    pytest.mark.skipif(shutil.which("initdb") is None, reason="PostgreSQL not installed"),
]

TRIALS = 3  # two workers: one trial each at once, then a race for the last one (the loser's is excess)
KILLED_TRIALS = 2  # the survivor completes them all
KILLED_EPOCHS = 20  # every worker's (a study's workers share their settings): the doomed trial is killed mid-training
SWEEP = """study: {study}
objective: {{metric: test_loss, direction: minimize}}
trials: {trials}
space:
  train.lr: {{type: float, low: 0.01, high: 0.2, log: true}}
  train.momentum: {{type: float, low: 0.0, high: 0.9}}
"""


def two_clones(stack, template, where, name):
    """Clone A (see team_clone) and clone B of the same bare git remote and DVC remote."""
    bare, a = team_clone(stack, template, where, name)
    b = where / f"{name}-b"
    P.run(["git", "clone", "-q", str(bare), b], where)
    P.dvc(b, "pull", env_=client_env(stack))
    return bare, a, b


def worker(clone, stack, sweep_file, *extra):
    """A sweep worker; the storage URL (the optuna role's password in it) in its environment, as docs/sweeps.md
    tells workers to pass it: never on a command line."""
    return P.Proc(
        ["python", "-m", "mnist_softmax.team.sweep", sweep_file, "--push", "origin", "--heartbeat", "2", *extra],
        clone,
        client_env(stack, PYTHONPATH="src", OPTUNA_STORAGE=stack.postgres.uri("optuna")),
    )


def load_study(stack, name):
    import optuna

    return optuna.load_study(study_name=name, storage=stack.postgres.uri("optuna"))


def study_runs(stack, bob, study):
    exp = bob.get_experiment_by_name(P.EXPERIMENT)
    return bob.search_runs([exp.experiment_id], f"tags.`sweep.study` = '{study}'", max_results=100)


def test_two_workers_share_one_study(stack, template, e2e_dir, bob):
    from optuna.trial import TrialState

    _bare, a, b = two_clones(stack, template, e2e_dir, "sweep-shared")
    for clone in (a, b):
        (clone / "sweep.yaml").write_text(SWEEP.format(study="shared", trials=TRIALS))
    workers = [worker(clone, stack, "sweep.yaml") for clone in (a, b)]  # at the same moment, on an empty study
    for w in workers:
        assert w.wait(timeout=1200) == 0, w.output
    study = load_study(stack, "shared")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS
    assert all(t.user_attrs.get("excess") for t in study.trials if t.state != TrialState.COMPLETE)
    names = {t.user_attrs["dvc_exp"] for t in complete}
    assert len(names) == TRIALS

    # every trial is an experiment in the git remote
    remote = P.dvc(a, "exp", "list", "--name-only", "origin", env_=client_env(stack)).stdout.split()
    assert names <= set(remote) and len([n for n in remote if n.startswith("shared-")]) == TRIALS

    # MLflow: one study run, TRIALS FINISHED trial runs under it, the best one marked
    runs = study_runs(stack, bob, "shared")
    [parent] = [r for r in runs if "sweep.trial" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.trials_done"] == str(TRIALS)
    assert sorted(r.info.run_name for r in children) == sorted(names)
    assert {r.info.status for r in children} == {"FINISHED"}
    best = study.best_trial
    assert [r.data.tags["sweep.trial"] for r in children if r.data.tags.get("sweep.best") == "true"] == [
        str(best.number)
    ]
    assert parent.data.tags["sweep.best_trial"] == str(best.number)

    # the study's best params are the params of the best experiment that `dvc exp show` shows
    P.dvc(a, "exp", "pull", "origin", *sorted(names), env_=client_env(stack))
    shown = {rev["name"]: rev["data"] for rev in P.experiments(P.dvc_json(a, "exp", "show")) if rev["name"] in names}
    assert set(shown) == names
    best_name = min(shown, key=lambda n: shown[n]["metrics"]["metrics/eval.json"]["data"]["test_loss"])
    train = shown[best_name]["params"]["params.yaml"]["data"]["train"]
    assert best_name == best.user_attrs["dvc_exp"]
    assert {"train.lr": train["lr"], "train.momentum": train["momentum"]} == best.params


def test_a_worker_killed_mid_trial_leaves_nothing_running(stack, template, e2e_dir, bob):
    """kill -9 of one worker's process group while its trial trains: the trial's guard interrupts its
    experiment (no `dvc exp run` or stage left running, its MLflow run KILLED), the trial ends FAILED in the
    study (its heartbeat goes stale), and the other worker completes the budget."""
    from optuna.trial import TrialState

    _, a, b = two_clones(stack, template, e2e_dir, "sweep-killed")
    for clone in (a, b):
        (clone / "sweep.yaml").write_text(SWEEP.format(study="killed", trials=KILLED_TRIALS))
    epochs = f"train.epochs={KILLED_EPOCHS}"
    doomed = worker(a, stack, "sweep.yaml", "--set", epochs)
    survivor = worker(b, stack, "sweep.yaml", "--set", epochs)
    trial = int(doomed.wait_for(r"^sweep: trial (\d+): killed-").group(1))
    deadline = time.monotonic() + 300
    while True:  # until that trial's training is under way
        runs = [r for r in study_runs(stack, bob, "killed") if r.data.tags.get("sweep.trial") == str(trial)]
        if runs and runs[0].data.tags.get("pipeline.stage.train") == "RUNNING":
            break
        assert time.monotonic() < deadline and doomed.popen.poll() is None, doomed.output
        time.sleep(0.5)
    os.killpg(doomed.popen.pid, signal.SIGKILL)
    doomed.wait()
    assert survivor.wait(timeout=1200) == 0, survivor.output
    deadline = time.monotonic() + STOP_S + 10
    while left := experiment_processes(a):  # the guard gives the experiment STOP_S to end, then kills it
        assert time.monotonic() < deadline, left
        time.sleep(0.5)

    study = load_study(stack, "killed")
    states = {t.number: t.state for t in study.trials}
    assert states[trial] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == KILLED_TRIALS
    assert TrialState.RUNNING not in states.values()
    runs = study_runs(stack, bob, "killed")
    assert "RUNNING" not in {r.info.status for r in runs}
    [killed] = [r for r in runs if r.data.tags.get("sweep.trial") == str(trial)]
    assert killed.info.status == "KILLED", {k: v for k, v in killed.data.tags.items() if k.startswith("pipeline")}
