"""MlflowTracker: the tracking interface (tracking/__init__.py) on MLflow.

train opens a new run; evaluate and plot attach to the run that produced their model: the one the working
copy's run file names, else the one run tagged with the model's SHA-256 (restored by DVC from its run-cache:
*reused*), else, when several runs produced it, a new run that names them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_softmax.tracking.completion import copy_earlier_results
from mnist_softmax.tracking.context import process_identity, run_context_tags
from mnist_softmax.tracking.interface import NullRun, Run
from mnist_softmax.tracking.lifecycle import (
    OWNER_TAG,
    STAGE_TAG,
    end_orphaned_runs,
    heartbeat,
    owner_tags,
    stage_attempt,
)
from mnist_softmax.tracking.run import MODEL_HASH_TAG, RunHandle
from mnist_softmax.tracking.run_file import current_exp_name, read_link, write_link
from mnist_softmax.tracking.store import open_store

# A run whose training DVC restored from its run-cache for another experiment, whose evaluate or plot then ran:
REUSED_TAG = "dvc_exp_names_reused"  # those experiments' names, comma-separated
REUSED_ARTIFACTS = "dvc_exp_reused"  # their stages' files go to dvc_exp_reused/<experiment>/...
AMBIGUOUS_TAG = "pipeline.model_runs"  # on a run evaluate/plot opened: the runs that all produced its model
EVALUATED_HASH_TAG = "model_sha256_evaluated"  # on such a run: the model it evaluated
# The colour the UI draws a run in (MLflow's own tag, also set by its colour picker). Unset, the UI hashes the run
# id into its palette, where two runs often share a colour. Tableau 10: ten colours told apart at a glance.
COLOR_TAG = "mlflow.runColor"
RUN_COLORS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
COLOR_WINDOW = 5  # runs started at once (a queue's workers) get distinct colours up to this many


def run_color(client: MlflowClient, run_id: str) -> str:
    """The colour after that of the latest run started before this one, among the store's latest runs: consecutive
    runs cycle through the palette. Runs started beside this one take distinct free colours, in start order."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    recent = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=COLOR_WINDOW)[::-1]
    colours = [r.data.tags.get(COLOR_TAG) for r in recent]
    ids = [r.info.run_id for r in recent]
    before = [c for c in colours[: ids.index(run_id) if run_id in ids else None] if c in RUN_COLORS]
    start = RUN_COLORS.index(before[-1]) + 1 if before else 0
    free = [c for c in RUN_COLORS[start:] + RUN_COLORS[:start] if c not in colours]
    uncoloured = [i for i, c in zip(ids, colours) if c is None]
    return free[uncoloured.index(run_id) % len(free) if run_id in uncoloured else 0]


def quiet_mlflow() -> None:
    """A stage prints its own lines and real warnings only: no INFO lines of MLflow's (store creation, input
    example checks) or alembic's, no progress bars for MLflow's internal artifact downloads."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at" after each call


class MlflowTracker:
    def __init__(self, experiment: str, root: Path | None = None, run_file: str | Path | None = None):
        quiet_mlflow()
        self.client, self.experiment_id, self.uri = open_store(experiment, root)
        self.run_file = Path(run_file) if run_file else None
        mlflow.set_tracking_uri(self.uri)
        end_orphaned_runs(self.client, self.experiment_id)

    def _link(self, run_id: str, model_sha256: str | None, reused: bool) -> None:
        if self.run_file:
            write_link(self.run_file, run_id, model_sha256, reused, self.uri)

    @contextlib.contextmanager
    def training_run(self, run_name: str | None, params: dict[str, str], tags: dict[str, str]) -> Iterator[Run]:
        """A new run for one training, tagged with where it runs (git commit, DVC experiment, sweep trial); the
        train stage's outcome ends it (lifecycle.py)."""
        tags = {**run_context_tags(), **tags, **owner_tags("train"), STAGE_TAG + "train": "RUNNING"}
        # Named after what made it: the DVC experiment, else the workspace and its commit.
        commit = tags.get("git_commit", "")
        run_name = run_name or ("workspace@" + commit[:7] if commit else "workspace")
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
        handle = RunHandle(self.client, run.info.run_id)
        self._link(handle.run_id, None, reused=False)

        def on_success() -> None:
            if handle.model_sha256:
                self._complete(handle.run_id, handle.model_sha256)
            self._link(handle.run_id, handle.model_sha256, False)

        try:
            with (
                stage_attempt(self.client, self.uri, handle.run_id, "train", on_success=on_success),
                heartbeat(self.client, handle.run_id),
            ):
                with contextlib.suppress(MlflowException):  # without it the run keeps the UI's own colour
                    handle.set_tags({COLOR_TAG: run_color(self.client, handle.run_id)})
                handle.log_params(params)
                yield handle
        finally:
            # the run is ended already (end_stage): this only clears the active-run state, keeping its status.
            # A lost server must not hide the stage's own error: its run is ended later (lifecycle.py).
            status = "FAILED"
            with contextlib.suppress(Exception):
                status = self.client.get_run(handle.run_id).info.status
            with contextlib.suppress(Exception):
                mlflow.end_run(status)  # leaves no active run for MLflow's exit hook to mark FINISHED

    def _complete(self, run_id: str, model_sha256: str, log: Callable[[str], None] = print) -> None:
        """If an earlier run made the same model bytes, DVC will skip evaluate and plot: copy their results from
        there (completion.py), saying so. A failed copy costs the run its copy, not the training."""
        try:
            source = copy_earlier_results(self.client, self.experiment_id, run_id, model_sha256)
        except Exception as e:
            log(f"mlflow: could not copy the results of an earlier run of model {model_sha256[:12]}: {e}")
            return
        if source:
            log(
                f"mlflow: run {source} made the same model bytes: its evaluation and plots are copied into this"
                " run (tags pipeline.copied.*) until evaluate and plot run on it"
            )

    @contextlib.contextmanager
    def attached_run(self, model_sha256: str, stage: str, log: Callable[[str], None] = print) -> Iterator[Run]:
        """A handle on the run evaluate or plot logs into (a NullRun if no run produced the model). A run
        trained for another DVC experiment gets this experiment's files under dvc_exp_reused/<experiment>/,
        and its status stays the training's."""
        found = self._find_run(model_sha256, stage, log)
        if found is None:
            yield NullRun()
            return
        run_id, reused = found
        reused_as = (current_exp_name() or "workspace") if reused else ""
        handle = RunHandle(self.client, run_id, f"{REUSED_ARTIFACTS}/{reused_as}" if reused else None)
        if reused:
            seen = [n for n in self.client.get_run(run_id).data.tags.get(REUSED_TAG, "").split(",") if n]
            if reused_as not in seen:
                handle.set_tags({REUSED_TAG: ",".join([*seen, reused_as])})
        with stage_attempt(self.client, self.uri, run_id, stage, reused_as):
            yield handle

    def _find_run(self, model_sha256: str, stage: str, log: Callable[[str], None]) -> tuple[str, bool] | None:
        """(run id, reused) for this model: the run file's run, else the one run that produced it (reused),
        else, when several did, a new run that says so; None when no run did."""
        link = read_link(self.run_file, model_sha256, self.uri) if self.run_file else None
        if link is not None:
            with contextlib.suppress(MlflowException):
                self.client.get_run(link.run_id)
                return link.run_id, link.reused
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.{MODEL_HASH_TAG} = '{model_sha256}'",
            order_by=["attributes.start_time ASC"],
            max_results=100,
        )
        if not runs:
            log(
                f"mlflow: no run in {self.uri} produced model {model_sha256[:12]} (trained before tracking,"
                " or restored by DVC from its run-cache into a new store); results not logged"
            )
            return None
        if len(runs) == 1:
            found = runs[0].info.run_id, True
        else:
            ids = ", ".join(r.info.run_id for r in runs)
            log(
                f"mlflow: {len(runs)} runs produced model {model_sha256[:12]} ({ids}) and none was made in this"
                f" working copy: {stage}'s results go to a new run, which names them (tag {AMBIGUOUS_TAG})"
            )
            tags = {
                **process_identity(),
                OWNER_TAG: stage,
                AMBIGUOUS_TAG: ids,
                EVALUATED_HASH_TAG: model_sha256,
                "mlflow.note.content": f"Evaluates model {model_sha256}, which runs {ids} all produced.",
            }
            run = self.client.create_run(self.experiment_id, run_name=os.environ.get("DVC_EXP_NAME"), tags=tags)
            found = run.info.run_id, False
        self._link(found[0], model_sha256, reused=found[1])
        return found
