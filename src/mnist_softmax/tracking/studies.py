"""A sweep's MLflow runs (team/sweep.py): one parent run per Optuna study, its trials' runs its children."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.tracking import MlflowClient

from mnist_softmax.tracking.context import STUDY_TAG, TRIAL_TAG
from mnist_softmax.tracking.lifecycle import HEARTBEAT_TAG, OWNER_TAG, end_stage, heartbeat, now_ms, stage_outcomes
from mnist_softmax.tracking.run import RunHandle
from mnist_softmax.tracking.store import open_store, project_client

BEST_TAG = "sweep.best"


def open_study_run(experiment: str, study: str, budget: int) -> str:
    """The study's parent run (RUNNING while the study goes on; its heartbeat renewed by the workers)."""
    client, experiment_id, _ = open_store(experiment)
    tags = {
        STUDY_TAG: study,
        "sweep.budget": str(budget),
        OWNER_TAG: "sweep",
        HEARTBEAT_TAG: now_ms(),
        "mlflow.note.content": f"Optuna study {study}: its trials are this run's children.",
    }
    return client.create_run(experiment_id, run_name=f"study {study}", tags=tags).info.run_id


@contextlib.contextmanager
def study_heartbeat(parent_run: str) -> Iterator[None]:
    with heartbeat(project_client(), parent_run):
        yield


def _trial_runs(client: MlflowClient, experiment_id: str, study: str, trial: int | None = None) -> list:
    where = f"tags.`{STUDY_TAG}` = '{study}'" + (f" and tags.`{TRIAL_TAG}` = '{trial}'" if trial is not None else "")
    return [r for r in client.search_runs([experiment_id], where, max_results=5000) if TRIAL_TAG in r.data.tags]


def mark_best(parent_run: str, study: str, trial: int, value: float, ran_as: int | None = None) -> None:
    """Tag the best trial's run sweep.best=true (the others false) and the study's run with the best. A trial
    that holds the result of an experiment run as another trial (`ran_as`) has that trial's runs."""
    client = project_client()
    parent = client.get_run(parent_run)
    runs = _trial_runs(client, parent.info.experiment_id, study)
    best = [r.info.run_id for r in runs if r.data.tags[TRIAL_TAG] == str(trial if ran_as is None else ran_as)]
    for run in runs:
        flag = "true" if run.info.run_id in best else "false"
        if run.data.tags.get(BEST_TAG) != flag:
            client.set_tag(run.info.run_id, BEST_TAG, flag)
    tags = {"sweep.best_trial": str(trial), "sweep.best_value": repr(value)}
    if best:
        tags["sweep.best_run"] = best[0]
    RunHandle(client, parent_run).set_tags(tags)


def finish_study_run(parent_run: str, done: int) -> None:
    """The budget is done: the study's run ends FINISHED (also after a worker that left ended it FAILED)."""
    client = project_client()
    RunHandle(client, parent_run).set_tags({"sweep.trials_done": str(done)})
    end_stage(client, parent_run, "sweep", "FINISHED")


def end_study_run(parent_run: str, status: str, reason: str) -> None:
    """The study's workers stopped before its budget was done: its run ends `status` with the reason."""
    end_stage(project_client(), parent_run, "sweep", status, reason)


def end_trial_runs(study: str, trial: int, reason: str) -> None:
    """A trial Optuna failed as stale: each stage still RUNNING on its runs ends FAILED with the reason. A
    stage that then finishes after all (its worker was only paused) records its own outcome over it."""
    client = project_client()
    for exp in client.search_experiments():
        for run in _trial_runs(client, exp.experiment_id, study, trial):
            if run.info.status != "RUNNING":
                continue
            running = [s for s, outcome in stage_outcomes(run.data.tags).items() if outcome == "RUNNING"]
            for stage in running or [run.data.tags.get(OWNER_TAG, "train")]:
                end_stage(client, run.info.run_id, stage, "FAILED", reason)
