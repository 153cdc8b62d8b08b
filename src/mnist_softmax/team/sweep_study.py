"""A sweep's study (team/sweep.py): its storage, how a worker creates or joins it, and the trials of workers
that are gone."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator

from mnist_softmax.cli import StageError
from mnist_softmax.team.sweep_file import HEARTBEAT_KEY, SweepFile, differences
from mnist_softmax.tracking.context import project_root

MISSED_BEATS = 4  # a trial is failed after this many heartbeats missed
DEFAULT_HEARTBEAT_S = 10  # a new study's, when its creator gives no --heartbeat
CREATOR_WAIT_S = 120  # longest wait for the worker that created a study to open its MLflow run
SWEEP_ATTR, PARENT_ATTR = "sweep", "mlflow_parent_run"  # the study's user attrs: its fingerprint, its MLflow run


def storage_url(given: str | None) -> str:
    """--storage, else $OPTUNA_STORAGE, else sqlite:///optuna.db in the project root. A --storage URL with a
    password is refused: any account on the machine reads command lines."""
    if given:
        from sqlalchemy.engine import make_url

        try:
            url = make_url(given)
        except Exception:  # malformed: RDBStorage says why
            return given
        if url.password or "password" in url.query:
            raise StageError(
                "--storage: the URL holds a password, which any account on this machine reads on the command"
                " line (ps): put the URL in $OPTUNA_STORAGE instead (docs/sweeps.md)"
            )
        return given
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{project_root() / 'optuna.db'}"


def open_storage(url: str, heartbeat_s: int):
    """The RDB storage, with heartbeats: a trial whose worker stopped beating for the grace period is failed
    by the next worker that looks (open_study sets the study's interval). Workers opening an empty database at
    once race on creating its tables: the losers wait and try again."""
    import optuna

    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=MISSED_BEATS * heartbeat_s,
                heartbeat_stale_trial_callback=_end_trial_run,
            )
        except Exception:  # sqlalchemy's IntegrityError / ProgrammingError from the racing CREATEs
            if attempt == 9:
                raise
            time.sleep(random.uniform(0.2, 1.0))


def _end_trial_run(study, trial) -> None:
    """A stale trial was failed: so is its MLflow run's running stage, if its guard has not done it."""
    from mnist_softmax.tracking.studies import end_trial_runs

    end_trial_runs(study.study_name, trial.number, "its sweep worker stopped (no Optuna heartbeat)")


def open_study(storage, sweep: SweepFile, experiment: str, mine: dict, creator_wait_s=CREATOR_WAIT_S, log=print):
    """(study, parent MLflow run id). The worker that creates the study records `mine` (sweep_file.fingerprint)
    and opens the study's MLflow run; the others wait for both, and refuse to join a study whose fingerprint
    differs from theirs (another objective, budget, space, params or heartbeat would corrupt its results).
    Every worker takes the study's heartbeat interval."""
    import optuna

    from mnist_softmax.tracking.store import open_store
    from mnist_softmax.tracking.studies import open_study_run

    open_store(experiment)  # a store the study's run cannot go into is refused before the study exists
    sampler = optuna.samplers.TPESampler(seed=None)
    pruner = (
        optuna.pruners.MedianPruner(n_warmup_steps=sweep.pruning.warmup_epochs)
        if sweep.pruning
        else optuna.pruners.NopPruner()
    )
    while True:
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=sweep.study,
                direction=sweep.objective.direction,
                sampler=sampler,
                pruner=pruner,
            )
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(storage=storage, study_name=sweep.study, sampler=sampler, pruner=pruner)
        else:
            try:
                study.set_user_attr(SWEEP_ATTR, {**mine, HEARTBEAT_KEY: mine[HEARTBEAT_KEY] or DEFAULT_HEARTBEAT_S})
                study.set_user_attr(PARENT_ATTR, open_study_run(experiment, sweep.study, sweep.trials))
            except BaseException:
                # a study without its MLflow run would keep every later worker waiting for it
                with contextlib.suppress(Exception):
                    storage.delete_study(study._study_id)
                raise
        if (attrs := _wait_for_run(study, creator_wait_s, log)) is not None:
            break
        log(f"sweep: study {sweep.study} has no MLflow run and no trial after {creator_wait_s:.0f} s: created anew")
        with contextlib.suppress(KeyError):  # another waiter did it
            storage.delete_study(study._study_id)
    theirs = attrs.get(SWEEP_ATTR)
    if isinstance(theirs, dict) and mine[HEARTBEAT_KEY] is None:
        mine = {**mine, HEARTBEAT_KEY: theirs.get(HEARTBEAT_KEY)}
    if theirs != mine:
        found = differences(theirs, mine) if isinstance(theirs, dict) else ["it records no sweep file"]
        raise StageError(
            f"study {sweep.study} runs another sweep file or other worker settings; this worker would spoil its"
            " results, so it does not join (use the study's sweep file, params.yaml, --set and --heartbeat, or"
            " another study name):\n" + "\n".join(f"  - {d}" for d in found)
        )
    storage.heartbeat_interval, storage.grace_period = theirs[HEARTBEAT_KEY], MISSED_BEATS * theirs[HEARTBEAT_KEY]
    return study, attrs[PARENT_ATTR]


def _wait_for_run(study, wait_s: float, log) -> dict | None:
    """The study's user attrs once its creator has opened its MLflow run; None when it has no run and no trial
    after `wait_s` (its creator died first) or is gone (its creator failed to open the run)."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            if PARENT_ATTR in (attrs := study.user_attrs):
                return attrs
            if time.monotonic() > deadline:
                if study.get_trials(deepcopy=False):
                    raise StageError(f"study {study.study_name} has trials but no MLflow run")
                return None
        except KeyError:  # deleted meanwhile
            return None
        if not said:
            log(f"sweep: waiting for the worker that created study {study.study_name} to open its MLflow run")
            said = True
        time.sleep(1)


def counts(study) -> tuple[int, int]:
    """(trials done: complete or pruned, trials running)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (
        sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
        states.count(TrialState.RUNNING),
    )


@contextlib.contextmanager
def beating(storage, trial_id: int) -> Iterator[None]:
    """The trial's Optuna heartbeat while the block runs (as study.optimize gives it)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is only a late one
                storage.record_heartbeat(trial_id)
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class StaleTrials:
    """Fails the trials whose worker is gone. Optuna's fail_stale_trials fails those whose heartbeat is older
    than the grace period (by the database's clock); a trial whose worker died between creating it and its
    first beat has no heartbeat, which that rule never sees: it is failed once this worker has seen it
    RUNNING without one for the grace period (timed here, so no two machines' clocks are compared)."""

    def __init__(self, storage, study, log=print):
        self.storage, self.study, self.log = storage, study, log
        self.grace_s = MISSED_BEATS * storage.get_heartbeat_interval()
        self.unbeating: dict[int, float] = {}  # trial id -> when first seen RUNNING without a heartbeat

    def __call__(self) -> None:
        import optuna
        from optuna.trial import TrialState

        optuna.storages.fail_stale_trials(self.study)
        running = {t._trial_id: t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        now = time.monotonic()
        self.unbeating = {tid: self.unbeating.get(tid, now) for tid in set(running) - self._beating(set(running))}
        for tid, since in self.unbeating.items():
            if now - since < self.grace_s:
                continue
            reason = f"no heartbeat at all for {self.grace_s} s: its worker died before its first"
            try:
                self.storage.set_trial_user_attr(tid, "fail_reason", reason)
                self.storage.set_trial_state_values(tid, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it ended meanwhile
            self.log(f"sweep: trial {running[tid].number} failed: {reason}")
            if callback := self.storage.get_heartbeat_stale_trial_callback():  # as fail_stale_trials does
                callback(self.study, running[tid])

    def _beating(self, trial_ids: set[int]) -> set[int]:
        """Which of the trials have a heartbeat row (Optuna's table; no API reads it)."""
        if not trial_ids:
            return set()
        import sqlalchemy

        query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
            sqlalchemy.bindparam("ids", expanding=True)
        )
        with self.storage.engine.connect() as connection:
            return {row[0] for row in connection.execute(query, {"ids": sorted(trial_ids)})}
