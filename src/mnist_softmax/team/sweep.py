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
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mnist_softmax.cli import StageError, run
from mnist_softmax.core.history import parse_epoch_line
from mnist_softmax.core.params import load_params
from mnist_softmax.fileio import read_json
from mnist_softmax.team.sweep_file import (
    SweepFile,
    dotted,
    fingerprint,
    load_sweep,
    metric_of,
    override,
    settings_problems,
    suggest,
)
from mnist_softmax.team.sweep_study import (
    CREATOR_WAIT_S,
    DEFAULT_HEARTBEAT_S,
    MISSED_BEATS,
    StaleTrials,
    beating,
    counts,
    open_storage,
    open_study,
    storage_url,
)
from mnist_softmax.team.sweep_trial import interrupt, trial_process
from mnist_softmax.tracking.context import PARENT_RUN_ENV, STUDY_ENV, TRIAL_ENV, project_root

WAIT_S = 5  # between looks at the other workers' trials
MAX_FAILURES = 3  # trials of one worker failed in a row: it stops
MAX_WAIT_S = 6 * 3600  # default deadline of a wait for other workers' trials
METRICS_FILE = "metrics/eval.json"  # evaluate's metrics (dvc.yaml): the objective is one of them


class Excess(Exception):
    """A trial past the budget: recorded as failed, with the user attr excess."""


class GaveUp(StageError):
    """A wait for other workers passed its deadline: this worker stops (not a failure of its trial)."""


class Worker:
    def __init__(
        self,
        sweep: SweepFile,
        storage,
        study,
        parent_run: str,
        push: str | None,
        fixed: Sequence[str] = (),
        params_path: str | Path = "params.yaml",
        max_wait_s: float = MAX_WAIT_S,
        log=print,
    ):
        self.sweep, self.storage, self.study, self.parent_run, self.push, self.log = (
            sweep,
            storage,
            study,
            parent_run,
            push,
            log,
        )
        self.fixed = list(fixed)  # KEY=VALUE for every trial
        self.params_path, self.max_wait_s = params_path, max_wait_s
        self.fail_stale = StaleTrials(storage, study, log)
        self.failures, self.last_failure = 0, ""  # trials failed in a row, the last one's reason
        self.stopped = False
        self.waiting_for = ""

    def run(self) -> None:
        """Trials until the budget is done (or MAX_FAILURES in a row failed): ask, run, tell, as
        study.optimize does, but a trial that another worker failed meanwhile (this one was paused longer
        than the grace period) keeps its result instead of ending the worker."""
        import optuna
        from optuna.trial import TrialState

        while not self.stopped:
            self.fail_stale()
            trial = self.study.ask()
            try:
                with beating(self.storage, trial._trial_id):
                    state, value, reason = self.attempt(trial)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            if reason:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr("fail_reason", reason[-2000:])
            try:
                frozen = self.study.tell(trial, value, state=state, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker at this moment
                frozen = self.study.get_trials(deepcopy=False)[trial.number]
            if frozen.state != state and state == TrialState.COMPLETE:
                self.requeue(trial, value)
            self.after_trial(frozen, failed=state == TrialState.FAIL and not trial.user_attrs.get("excess"))

    def attempt(self, trial) -> tuple:
        """(state, value, reason) of the trial."""
        import optuna
        from optuna.trial import TrialState

        try:
            return TrialState.COMPLETE, self.objective(trial), ""
        except GaveUp:
            raise
        except optuna.TrialPruned:
            return TrialState.PRUNED, None, ""
        except (Excess, StageError) as e:
            return TrialState.FAIL, None, str(e)

    def requeue(self, trial, value: float) -> None:
        """The trial was failed by another worker while this one did not beat (paused, suspended): its
        result goes back into the study as a queued trial, which counts in the budget like any other and
        which the next worker to ask takes as done, running nothing."""
        name = trial.user_attrs.get("dvc_exp")
        self.log(
            f"sweep: trial {trial.number} was failed meanwhile by another worker (no heartbeat for"
            f" {self.fail_stale.grace_s} s: was this worker paused?); its result, {self.sweep.objective.metric}"
            f" = {value} ({name}), goes back into the study as a queued trial"
        )
        self.study.enqueue_trial(
            trial.params,
            user_attrs={"dvc_exp": name, "result": value, "result_of": trial.number},
            skip_if_exists=False,
        )

    def wait(self, what: str, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise GaveUp(f"gave up after {self.max_wait_s:.0f} s waiting for {what}")
        if what != self.waiting_for:
            self.log(f"sweep: waiting for {what}")
            self.waiting_for = what
        time.sleep(WAIT_S)

    def others_running(self, trials) -> str:
        from optuna.trial import TrialState

        running = [str(t.number) for t in trials if t.state == TrialState.RUNNING]
        return (
            f"trial{'s' if len(running) > 1 else ''} {', '.join(running)}, running on other workers (each ends,"
            f" or is failed {self.fail_stale.grace_s} s after its worker's last heartbeat)"
        )

    def within_budget(self, trial) -> bool:
        """Whether `trial` is one of the budget's: the budget counts done and running trials in the order the
        storage numbered them, so workers asking at the same moment cannot overshoot it. (Optuna's
        MaxTrialsCallback counts only ended trials, after each one: N workers overshoot it by up to N - 1.)"""
        from optuna.trial import TrialState

        deadline = time.monotonic() + self.max_wait_s
        while True:
            self.fail_stale()
            ahead = [
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            ]
            if len(ahead) < self.sweep.trials:
                return True
            if all(t.state != TrialState.RUNNING for t in ahead):
                return False
            # a running one may still fail and free its place
            self.wait(f"{self.others_running(ahead)}: trial {trial.number} runs if one fails", deadline)

    def objective(self, trial) -> float:
        import optuna

        if not self.within_budget(trial):
            trial.set_user_attr("excess", True)
            self.stopped = True
            raise Excess(f"trial {trial.number}: the budget of {self.sweep.trials} trials is taken")
        values = suggest(trial, self.sweep)
        if "result" in trial.user_attrs:  # requeue(): the experiment ran already
            attrs = trial.user_attrs
            self.log(
                f"sweep: trial {trial.number}: the result of trial {attrs['result_of']} ({attrs['dvc_exp']}):"
                f" {self.sweep.objective.metric} = {attrs['result']}"
            )
            return float(attrs["result"])
        name = f"{self.sweep.study}-{trial.number}"
        trial.set_user_attr("dvc_exp", name)
        self.log(f"sweep: trial {trial.number}: {name} " + " ".join(f"{k}={v!r}" for k, v in values.items()))
        settings = [*self.fixed, *(override(k, v) for k, v in values.items())]
        if problems := settings_problems(self.params_path, settings, values):  # what is checked is what lands
            raise self.failure(f"{name}: not run: " + "; ".join(problems))
        env = {
            **os.environ,
            STUDY_ENV: self.sweep.study,
            TRIAL_ENV: str(trial.number),
            PARENT_RUN_ENV: self.parent_run,
        }
        args = ["dvc", "exp", "run", "--temp", "-n", name, *[x for kv in settings for x in ("-S", kv)]]
        pruned = False
        tail: list[str] = []
        with trial_process(args, env) as proc:
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                tail = ([*tail, line])[-40:]
                epoch = parse_epoch_line(line)
                if epoch and self.sweep.pruning and not pruned:
                    trial.report(epoch[1][self.sweep.objective.metric], epoch[0])
                    if trial.should_prune():
                        pruned = True
                        interrupt(proc)  # as Ctrl-C: the stage ends its run KILLED
        if pruned:
            self.log(f"sweep: trial {trial.number} pruned")
            raise optuna.TrialPruned()
        if proc.returncode != 0:
            raise self.failure(f"{name} failed (exit {proc.returncode}):\n{''.join(tail)}")
        if self.push:  # before reading the result: a trial that fails on it still shares its experiment
            done = subprocess.run(
                ["dvc", "exp", "push", "--run-cache", self.push, name],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise self.failure(f"dvc exp push {self.push} {name} failed: {done.stdout}{done.stderr}")
        params, metrics = self._result(name)
        if wrong := [k for k, v in values.items() if json.dumps(dotted(params, k)) != json.dumps(v)]:
            raise self.failure(f"{name}: its params.yaml holds other values than the trial's for {', '.join(wrong)}")
        try:
            value = metric_of(metrics, self.sweep.objective.metric)
        except ValueError as e:
            raise self.failure(f"{name}: {METRICS_FILE}: {e}") from None
        self.log(f"sweep: trial {trial.number}: {self.sweep.objective.metric} = {value}")
        return value

    def failure(self, message: str) -> StageError:
        """A trial's failure, kept to report if the worker gives up."""
        self.last_failure = message
        self.log(f"sweep: {message}")
        return StageError(message)

    def _result(self, name: str) -> tuple[dict, dict]:
        """(params.yaml, metrics file) of the experiment, as `dvc exp show` reads them."""
        shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if shown.returncode != 0:
            raise self.failure(f"dvc exp show failed (exit {shown.returncode}): {shown.stderr.strip()[-2000:]}")
        for baseline in json.loads(shown.stdout):  # stdout is the JSON alone: DVC logs to stderr
            for exp in baseline.get("experiments") or []:
                rev = exp["revs"][0]
                if rev.get("name") == name:
                    data = rev.get("data") or {}
                    params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                    metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data")
                    if metrics is None:
                        break
                    return params, metrics
        raise self.failure(f"dvc exp show has no {METRICS_FILE} for {name}")

    def after_trial(self, frozen, failed: bool) -> None:
        """Mark the best trial in MLflow; stop once the budget is done and no trial is left running (one whose
        worker died is failed once its heartbeat is stale), waiting meanwhile while other workers' trials it
        may still need are running."""
        from optuna.trial import TrialState

        from mnist_softmax.tracking.studies import finish_study_run, mark_best

        if frozen.state == TrialState.COMPLETE and self.study.best_trial.number == frozen.number:
            ran_as = frozen.user_attrs.get("result_of")  # a queued result: its runs are the trial's that ran it
            mark_best(self.parent_run, self.study.study_name, frozen.number, frozen.value, ran_as)
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= MAX_FAILURES:  # something every trial hits: stop rather than fail forever
            self.stopped = True
            return
        deadline = time.monotonic() + self.max_wait_s
        while True:
            self.fail_stale()
            done, running = counts(self.study)
            if done >= self.sweep.trials and not running:
                finish_study_run(self.parent_run, done)
                self.stopped = True
                return
            if done + running < self.sweep.trials:
                return
            self.wait(f"{self.others_running(self.study.get_trials(deepcopy=False))}: the budget is taken", deadline)

    def leave(self, status: str, reason: str) -> None:
        """This worker stops before the budget is done: when no trial is running (no other worker is at work),
        the study's MLflow run ends `status` with the reason; a worker that goes on later ends it FINISHED. A
        trial still running may be one whose worker died: it waits up to the grace period for it to go stale."""
        from mnist_softmax.tracking.studies import end_study_run

        deadline = time.monotonic() + self.fail_stale.grace_s + self.storage.get_heartbeat_interval()
        while True:
            self.fail_stale()
            done, running = counts(self.study)
            if done >= self.sweep.trials or (running and time.monotonic() > deadline):
                return  # the budget is done, or another worker is at work: it ends the run
            if not running:
                break
            if self.waiting_for != "leave":
                trials = self.others_running(self.study.get_trials(deepcopy=False))
                self.log(f"sweep: waiting up to {self.fail_stale.grace_s} s for {trials}, to end the study's run")
                self.waiting_for = "leave"
            time.sleep(1)
        why = f"its workers stopped with {done} of {self.sweep.trials} trials done; the last: {reason}"
        end_study_run(self.parent_run, status, why)
        self.log(f"sweep: the study's MLflow run ends {status}: {why}")


def check_objective(sweep: SweepFile, root: Path, log=print) -> None:
    """Before any trial: the objective must be a metric the evaluate stage writes (this clone's metrics file,
    written by its last evaluate, says which)."""
    path = root / METRICS_FILE
    if not path.exists():
        log(f"sweep: no {METRICS_FILE} here to check the objective against: the first trial checks it")
        return
    try:
        metric_of(read_json(path), sweep.objective.metric)
    except ValueError as e:
        raise StageError(f"objective.metric: the evaluate stage writes {METRICS_FILE} with {e}") from None


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
        default=None,
        help=f"seconds between a trial's heartbeats, the same for every worker of a study (default: the study's,"
        f" {DEFAULT_HEARTBEAT_S} for a new one); a trial is failed after {MISSED_BEATS} missed",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=MAX_WAIT_S,
        metavar="SECONDS",
        help="longest wait for other workers' running trials (and for a study's creator: at most"
        f" {CREATOR_WAIT_S} s) before this worker stops",
    )
    args = ap.parse_args(argv)
    url = storage_url(args.storage)
    sweep = load_sweep(args.sweep, args.params)
    if problems := settings_problems(args.params, args.set, {}):  # read as `dvc exp run -S` reads them
        raise StageError("--set: params.yaml would not hold what is set:\n" + "\n".join(f"  - {p}" for p in problems))
    check_objective(sweep, project_root())
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
    # Worker.run gives each trial its heartbeat itself (beating), as study.optimize would
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    experiment = load_params(args.params).tracking.experiment
    storage = open_storage(url, args.heartbeat or DEFAULT_HEARTBEAT_S)
    mine = fingerprint(sweep, args.heartbeat, args.set, args.params)
    study, parent = open_study(storage, sweep, experiment, mine, min(CREATOR_WAIT_S, args.max_wait))
    worker = Worker(sweep, storage, study, parent, args.push, args.set, args.params, args.max_wait)
    from mnist_softmax.tracking.studies import study_heartbeat

    with study_heartbeat(parent):
        try:
            worker.run()
        except KeyboardInterrupt as e:
            worker.leave("KILLED", f"interrupted ({e or 'Ctrl-C'})")
            raise
        except BaseException as e:
            worker.leave("FAILED", f"{type(e).__name__}: {e}")
            raise
        if worker.failures >= MAX_FAILURES:
            reason = f"{MAX_FAILURES} trials in a row failed; the last: {worker.last_failure}"
            worker.leave("FAILED", reason)
            raise StageError(reason)
    done, _ = counts(study)
    best = study.best_trial if done else None
    print(
        f"sweep: study {sweep.study}: {done} of {sweep.trials} trials done"
        + (f"; best: trial {best.number}, {sweep.objective.metric} = {best.value}, {best.params}" if best else "")
    )


def _hung_up(signum, frame):
    raise KeyboardInterrupt("signal SIGHUP")


if __name__ == "__main__":
    # its terminal closed: stop as for SIGTERM (cli.run), its trial's experiment with it
    signal.signal(signal.SIGHUP, _hung_up)
    sys.exit(run(main, "sweep"))
