"""Sweeps on Optuna: a study in an RDB storage (SQLite on one machine, the team's PostgreSQL for many) that any
number of workers, on any number of machines, each in its own clone, share. Each trial is a real DVC
experiment (`dvc exp run --temp -n STUDY-N -S ...`) with its own MLflow run, a child of the study's run.

    python -m mnist_softmax.team.sweep sweep.yaml [--storage URL] [--push origin]

The sweep file (sweep_file.py) names the study, the objective, the budget and the search space. Storage:
--storage, else $OPTUNA_STORAGE, else sqlite:///optuna.db in the project root. With --push, each finished
experiment is pushed (`dvc exp push --run-cache`): its git ref to that git remote, its data and run-cache to
the DVC remote, so every machine's `dvc exp show` sees every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from mnist_softmax.cli import StageError, run
from mnist_softmax.core.history import parse_epoch_line
from mnist_softmax.core.params import load_params
from mnist_softmax.core.settings import read_yaml
from mnist_softmax.team.sweep_file import SweepFile, load_sweep, metric_of, refused, suggest
from mnist_softmax.tracking.context import PARENT_RUN_ENV, STUDY_ENV, TRIAL_ENV, project_root

WAIT_S = 5  # between looks at the other workers' trials
MAX_FAILURES = 3  # trials of one worker failed in a row: it stops


def default_storage() -> str:
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{project_root() / 'optuna.db'}"


def open_storage(url: str, heartbeat_s: int):
    """The RDB storage, with heartbeats: a trial whose worker stopped beating for grace_period is failed by
    the next worker that asks for a trial. Workers opening an empty database at once race on creating its
    tables: the losers wait and try again."""
    import optuna

    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=4 * heartbeat_s,
                failed_trial_callback=_end_trial_run,
            )
        except Exception:  # sqlalchemy's IntegrityError / ProgrammingError from the racing CREATEs
            if attempt == 9:
                raise
            time.sleep(random.uniform(0.2, 1.0))


def _end_trial_run(study, trial) -> None:
    """A stale trial was failed: so is its MLflow run, if its stage's guard has not done it."""
    from mnist_softmax.tracking.studies import end_trial_runs

    end_trial_runs(study.study_name, trial.number, "its worker stopped (no Optuna heartbeat)")


def open_study(storage, sweep: SweepFile, experiment: str):
    """(study, parent MLflow run id). The worker that creates the study also opens its MLflow run; the others
    wait for it to be named in the study's user attrs."""
    import optuna

    from mnist_softmax.tracking.studies import open_study_run

    sampler = optuna.samplers.TPESampler(seed=None)
    pruner = (
        optuna.pruners.MedianPruner(n_warmup_steps=sweep.pruning.warmup_epochs)
        if sweep.pruning
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study,
            direction=sweep.objective.direction,
            sampler=sampler,
            pruner=pruner,
        )
        study.set_user_attr("mlflow_parent_run", open_study_run(experiment, sweep.study, sweep.trials))
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=sweep.study, sampler=sampler, pruner=pruner)
    deadline = time.monotonic() + 120
    while "mlflow_parent_run" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise StageError(f"study {sweep.study} has no MLflow run after 120 s (its creator died?)")
        time.sleep(1)
    return study, study.user_attrs["mlflow_parent_run"]


def counts(study) -> tuple[int, int]:
    """(trials done: complete or pruned, trials running)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (
        sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
        states.count(TrialState.RUNNING),
    )


class Worker:
    def __init__(
        self,
        sweep: SweepFile,
        study,
        parent_run: str,
        push: str | None,
        fixed: Sequence[str] = (),
        log=print,
    ):
        self.sweep, self.study, self.parent_run, self.push, self.log = (
            sweep,
            study,
            parent_run,
            push,
            log,
        )
        self.fixed = list(fixed)  # KEY=VALUE for every trial
        self.failures, self.last_failure = 0, ""  # trials failed in a row, the last one's reason

    def within_budget(self, trial) -> bool:
        """Whether `trial` is one of the budget's: the budget counts done and running trials in the order the
        storage numbered them, so workers asking at the same moment cannot overshoot it. (Optuna's
        MaxTrialsCallback counts only ended trials, after each one: N workers overshoot it by up to N - 1.)"""
        import optuna
        from optuna.trial import TrialState

        while True:
            optuna.storages.fail_stale_trials(self.study)
            ahead = [
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            ]
            if len(ahead) < self.sweep.trials:
                return True
            if all(t.state != TrialState.RUNNING for t in ahead):
                return False
            time.sleep(WAIT_S)  # a running one may still fail and free its place

    def objective(self, trial) -> float:
        import optuna

        if not self.within_budget(trial):
            trial.set_user_attr("excess", True)
            self.study.stop()
            raise Excess(f"trial {trial.number}: the budget of {self.sweep.trials} trials is taken")
        values = suggest(trial, self.sweep)
        name = f"{self.sweep.study}-{trial.number}"
        trial.set_user_attr("dvc_exp", name)
        self.log(f"sweep: trial {trial.number}: {name} " + " ".join(f"{k}={v}" for k, v in values.items()))
        env = {
            **os.environ,
            STUDY_ENV: self.sweep.study,
            TRIAL_ENV: str(trial.number),
            PARENT_RUN_ENV: self.parent_run,
        }
        settings = [*self.fixed, *(f"{k}={v}" for k, v in values.items())]
        args = [
            "dvc",
            "exp",
            "run",
            "--temp",
            "-n",
            name,
            *[x for kv in settings for x in ("-S", kv)],
        ]
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # its own group: pruning interrupts all of it
        pruned = False
        tail: list[str] = []
        assert proc.stdout is not None  # stdout=PIPE
        try:
            for line in proc.stdout:
                tail = ([*tail, line])[-40:]
                epoch = parse_epoch_line(line)
                if epoch and self.sweep.pruning:
                    trial.report(epoch[1][self.sweep.objective.metric], epoch[0])
                    if trial.should_prune():
                        pruned = True
                        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: the stage ends its run KILLED
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait()
            raise
        if pruned:
            self.log(f"sweep: trial {trial.number} pruned")
            raise optuna.TrialPruned()
        if proc.returncode != 0:
            raise self.failure(f"{name} failed (exit {proc.returncode}):\n{''.join(tail)}")
        value = metric_of(self._metrics(name), self.sweep.objective.metric)
        if self.push:
            done = subprocess.run(
                ["dvc", "exp", "push", "--run-cache", self.push, name],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise self.failure(f"dvc exp push {self.push} {name} failed: {done.stdout}{done.stderr}")
        self.log(f"sweep: trial {trial.number}: {self.sweep.objective.metric} = {value}")
        return value

    def failure(self, message: str) -> StageError:
        """A trial's failure, kept to report if the worker gives up."""
        self.last_failure = message
        self.log(f"sweep: {message}")
        return StageError(message)

    def _metrics(self, name: str) -> dict:
        shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
        for baseline in json.loads(shown):  # stdout is the JSON alone: DVC logs to stderr
            for exp in baseline.get("experiments") or []:
                rev = exp["revs"][0]
                if rev.get("name") == name:
                    return rev["data"]["metrics"]["metrics/eval.json"]["data"]
        raise self.failure(f"dvc exp show has no metrics for {name}")

    def after_trial(self, study, frozen) -> None:
        """Mark the best trial in MLflow; stop once the budget is done and no trial is left running (one whose
        worker died is failed once its heartbeat is stale), waiting meanwhile while other workers' trials it
        may still need are running."""
        import optuna
        from optuna.trial import TrialState

        from mnist_softmax.tracking.studies import finish_study_run, mark_best

        if frozen.state == TrialState.COMPLETE and study.best_trial.number == frozen.number:
            mark_best(self.parent_run, study.study_name, frozen.number, frozen.value)
        failed = frozen.state == TrialState.FAIL and not frozen.user_attrs.get("excess")
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= MAX_FAILURES:  # something every trial hits: stop rather than fail forever
            study.stop()
            return
        while True:
            optuna.storages.fail_stale_trials(study)
            done, running = counts(study)
            if done >= self.sweep.trials and not running:
                finish_study_run(self.parent_run, done)
                study.stop()
                return
            if done + running < self.sweep.trials:
                return
            time.sleep(WAIT_S)


class Excess(Exception):
    """A trial past the budget: recorded as failed, with the user attr excess."""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep file (YAML)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument(
        "--storage",
        default=None,
        help="Optuna's RDB storage URL (default: $OPTUNA_STORAGE, else sqlite:///optuna.db in the project root)",
    )
    ap.add_argument(
        "--push",
        metavar="GIT_REMOTE",
        help="push each finished experiment there (and to the DVC remote, with its run-cache)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param fixed for every trial of this worker (as dvc exp run -S)",
    )
    ap.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a trial's heartbeats; a trial is failed after 4 missed",
    )
    args = ap.parse_args(argv)
    sweep = load_sweep(args.sweep, args.params)
    from ruamel.yaml import YAML

    raw = read_yaml(args.params)
    for setting in args.set:  # read as DVC reads -S values
        key, _, text = setting.partition("=")
        if why := refused(raw, key, YAML(typ="safe").load(text) if text else None):
            raise StageError(f"--set {setting}: params.yaml would refuse it ({why})")
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
    experiment = load_params(args.params).tracking.experiment
    storage = open_storage(args.storage or default_storage(), args.heartbeat)
    study, parent = open_study(storage, sweep, experiment)
    worker = Worker(sweep, study, parent, args.push, args.set)
    from mnist_softmax.tracking.studies import study_heartbeat

    with study_heartbeat(parent):
        study.optimize(worker.objective, callbacks=[worker.after_trial], catch=(Excess, StageError))
    if worker.failures >= MAX_FAILURES:
        raise StageError(f"{MAX_FAILURES} trials in a row failed; the last: {worker.last_failure}")
    done, _ = counts(study)
    best = study.best_trial if done else None
    print(
        f"sweep: study {sweep.study}: {done} of {sweep.trials} trials done"
        + (f"; best: trial {best.number}, {sweep.objective.metric} = {best.value}, {best.params}" if best else "")
    )


if __name__ == "__main__":
    sys.exit(run(main, "sweep"))
