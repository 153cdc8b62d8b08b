"""The run lifecycle: how a run's status follows its stages, and why no run stays RUNNING once its process is
gone. docs/architecture.md draws it; every rule is here.

A run belongs to one training. Each stage that works on it (train, and evaluate / plot attached to it) is an
*attempt*, recorded in the tag `pipeline.stage.<stage>`:

    RUNNING --(block returns)--------------------> FINISHED
            --(exception)------------------------> FAILED   (reason in .reason and pipeline.end_reason)
            --(Ctrl-C, SIGTERM)------------------> KILLED
            --(process gone, seen by its guard)--> FAILED   ("ended without closing the run"), or the outcome
                                                    the stage could not write itself (store busy, gone)
            --(process gone, seen by any stage)--> FAILED   (end_orphaned_runs: identity or stale heartbeat)

After every recorded outcome the run's status is derived from the latest attempt of each stage: FAILED if
one failed, else KILLED if one was interrupted, else FINISHED. A run restored by DVC for another experiment
(reused) records that experiment's attempts under `dvc_exp_reused.<experiment>.<stage>` and keeps the
training's status.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_softmax.cli import raise_if_interrupted
from mnist_softmax.tracking import last_word
from mnist_softmax.tracking.context import process_identity, process_start
from mnist_softmax.tracking.run import RunHandle
from mnist_softmax.tracking.store import last_calls

STAGE_TAG = "pipeline.stage."  # + stage: the outcome of the stage's latest attempt; + ".reason": why
REUSED_STAGE_TAG = "dvc_exp_reused."  # + experiment + "." + stage: the same, on a reused run
END_REASON_TAG = "pipeline.end_reason"
OWNER_TAG = "pipeline.owner_stage"  # the stage whose process keeps the run RUNNING
COPIED_TAG = "pipeline.copied."  # + stage: the run this run's results of that stage were copied from
HEARTBEAT_TAG = "pipeline.heartbeat"  # renewed while the owner runs: a value that changes, never compared to a clock
SEEN_TAG = "pipeline.heartbeat_seen."  # + watching machine: "<heartbeat> <its boot clock>" when it last changed
STALE_TAG = "pipeline.ended_as_stale"  # set when a watcher ended the run; its owner, if it lives on, revives it
REVIVED_TAG = "pipeline.revived"  # why the run was ended once, while its process still lived (suspended?)
# Seconds: the heartbeat's interval, and how long a watching machine must see the same heartbeat (on its own
# clock) before it ends the run. Environment variables of these names change them (tests, long suspends).
HEARTBEAT_S = ("MNIST_SOFTMAX_HEARTBEAT_S", 60.0)
STALE_S = ("MNIST_SOFTMAX_STALE_S", 600.0)
GUARD_WAIT_S = 5


def seconds(setting: tuple[str, float]) -> float:
    name, default = setting
    return float(os.environ.get(name) or default)


def now_ms() -> str:
    return str(int(time.time() * 1000))


def stage_key(stage: str, reused_as: str = "") -> str:
    return f"{REUSED_STAGE_TAG}{reused_as}.{stage}" if reused_as else STAGE_TAG + stage


def stage_outcomes(tags: dict[str, str]) -> dict[str, str]:
    """Each stage's latest attempt on the run, from its tags: stage -> RUNNING, FINISHED, FAILED or KILLED."""
    stages = {key.removeprefix(STAGE_TAG): value for key, value in tags.items() if key.startswith(STAGE_TAG)}
    return {stage: value for stage, value in stages.items() if "." not in stage}  # not the `.reason` tags


def derived_status(tags: dict[str, str]) -> str:
    """The run's status from its stages' latest attempts (a stage still running does not count)."""
    outcomes = set(stage_outcomes(tags).values())
    return next((s for s in ("FAILED", "KILLED") if s in outcomes), "FINISHED")


def end_stage(
    client: MlflowClient,
    run_id: str,
    stage: str,
    status: str,
    reason: str = "",
    reused_as: str = "",
) -> None:
    """Record an attempt's outcome, then the run's status that follows (not for a reused run)."""
    key = stage_key(stage, reused_as)
    tags = {key: status, f"{key}.reason": reason}
    if not reused_as and status != "FINISHED":
        tags[END_REASON_TAG] = reason if stage == "train" else f"{stage}: {reason}"
    RunHandle(client, run_id).set_tags(tags)
    if not reused_as:
        client.set_terminated(run_id, derived_status(client.get_run(run_id).data.tags))


@contextlib.contextmanager
def stage_attempt(
    client: MlflowClient,
    uri: str,
    run_id: str,
    stage: str,
    reused_as: str = "",
    on_success: Callable[[], None] | None = None,
) -> Iterator[None]:
    """The block is one attempt of `stage` on the run: its outcome is recorded however it ends."""
    with _guarded(uri, run_id, stage, reused_as) as guard:
        RunHandle(client, run_id).set_tags({stage_key(stage, reused_as): "RUNNING"})
        try:
            yield
            raise_if_interrupted()  # a Ctrl-C that Python swallowed still ends the attempt KILLED
        except KeyboardInterrupt as e:
            _end(guard, client, run_id, stage, "KILLED", f"interrupted: {str(e) or 'Ctrl-C'}", reused_as)
            raise
        except BaseException as e:
            _end(guard, client, run_id, stage, "FAILED", f"{type(e).__name__}: {e}", reused_as)
            raise
        if on_success:
            on_success()
        if not reused_as:  # this attempt's own results replace any copied ones
            with contextlib.suppress(MlflowException):
                client.delete_tag(run_id, COPIED_TAG + stage)
            revive(client, run_id, print)  # ended as stale while this process was suspended: it was not
        end_stage(client, run_id, stage, "FINISHED", "", reused_as)
        guard.tell(last_word.DONE)


def _end(guard: _Guard, client: MlflowClient, run_id: str, stage: str, status: str, reason: str, reused_as: str):
    """Record a failed or interrupted attempt now, trying once (a lost server must not hold up Ctrl-C); if the
    store will not take it (gone, or an interrupt left this process's own write half done and the store
    locked), the guard records it once this process is gone."""
    last_calls(client.tracking_uri)
    try:
        end_stage(client, run_id, stage, status, reason, reused_as)
        guard.tell(last_word.DONE)
    except Exception:
        guard.tell({"status": status, "reason": reason})


class _Guard:
    """The guard process of one attempt (guard.py): started in its own session, so that a kill of the
    stage's process group spares it; it reads this process's last word from its stdin, which closes when
    this process ends, however it ends. No word: it records the attempt FAILED. The store URI (which may hold
    credentials) goes in its environment, never its argv."""

    def __init__(self, uri: str, run_id: str, stage: str, reused_as: str):
        package_parent = str(Path(__file__).resolve().parents[2])  # the guard runs the code this stage runs
        env = {**os.environ, "PYTHONPATH": package_parent, "MLFLOW_TRACKING_URI": uri}
        args = [sys.executable, "-m", "mnist_softmax.tracking.guard", run_id, stage, str(os.getpid()), reused_as]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )

    def tell(self, word: dict[str, str]) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(last_word.encode(word))
            self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(GUARD_WAIT_S)


@contextlib.contextmanager
def _guarded(uri: str, run_id: str, stage: str, reused_as: str) -> Iterator[_Guard]:
    guard = _Guard(uri, run_id, stage, reused_as)
    try:
        yield guard
    finally:
        guard.close()


def end_abandoned_stage(
    client: MlflowClient, run_id: str, stage: str, pid: str, reused_as: str, word: dict[str, str] | None
) -> None:
    """The guard's job once the stage's process `pid` is gone: if the attempt is still RUNNING, record the
    outcome the stage told it, else FAILED."""
    if client.get_run(run_id).data.tags.get(stage_key(stage, reused_as)) != "RUNNING":
        return
    if word and word.get("status") in ("KILLED", "FAILED"):
        end_stage(client, run_id, stage, word["status"], word.get("reason", ""), reused_as)
    else:
        reason = f"process {pid} on {socket.gethostname()} ended without closing the run (killed?)"
        end_stage(client, run_id, stage, "FAILED", reason, reused_as)


@contextlib.contextmanager
def heartbeat(client: MlflowClient, run_id: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Renew the run's heartbeat tag every HEARTBEAT_S while the block runs; a run that a watcher ended as stale
    meanwhile (this process was suspended longer than STALE_S) is made RUNNING again."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds(HEARTBEAT_S)):
            with contextlib.suppress(Exception):  # a missed beat is only a late one
                client.set_tag(run_id, HEARTBEAT_TAG, now_ms())
                revive(client, run_id, log)

    threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def owner_tags(stage: str) -> dict[str, str]:
    """The tags that let others tell whether the run's owning process is alive: its identity, a heartbeat."""
    return {**process_identity(), OWNER_TAG: stage, HEARTBEAT_TAG: now_ms()}


def revive(client: MlflowClient, run_id: str, log: Callable[[str], None]) -> None:
    """Undo a watcher's verdict on a run whose owner is alive after all: RUNNING again, saying why it was not."""
    run = client.get_run(run_id)
    tags = run.data.tags
    if run.info.status != "FAILED" or STALE_TAG not in tags:
        return
    reason = tags.get(END_REASON_TAG, "")
    stage = tags.get(OWNER_TAG, "train")
    RunHandle(client, run_id).set_tags({stage_key(stage): "RUNNING", END_REASON_TAG: "", REVIVED_TAG: reason})
    client.delete_tag(run_id, STALE_TAG)
    client.update_run(run_id, status="RUNNING")
    log(f"mlflow: run {run_id} was ended while this process was not heard from ({reason}); it is RUNNING again")


def boot_clock() -> float:
    """Seconds since this machine booted, suspends included: never set back, unlike the wall clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def end_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End FAILED the RUNNING runs whose process is gone. A run of this machine (boot id and pid namespace
    match) is judged by its process: its pid is gone or belongs to another process. A run of another machine
    is judged by its heartbeat, on this machine's clock alone: the tag SEEN_TAG + this machine notes when this
    machine first saw its current heartbeat; once that is older than STALE_S, the run is ended."""
    me, ended = process_identity(), []
    watcher = SEEN_TAG + (me["pipeline.boot_id"] or me["pipeline.host"])
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid, beat, host = (
            tags.get("pipeline.pid", ""),
            tags.get(HEARTBEAT_TAG, ""),
            tags.get("pipeline.host"),
        )
        same_machine = (
            tags.get("pipeline.boot_id")
            and all(tags.get(k) == me[k] for k in ("pipeline.boot_id", "pipeline.pid_namespace"))
            and pid.isdigit()
        )
        if same_machine:
            if process_start(int(pid)) == tags.get("pipeline.pid_start"):
                continue
            reason, stale_by = f"process {pid} on {host} ended without closing the run (killed?)", {}
        else:
            seen_beat, _, seen_at = tags.get(watcher, "").partition(" ")
            if seen_beat != beat or not seen_at:
                with contextlib.suppress(MlflowException):  # a reader may not tag others' runs: it never ends them
                    client.set_tag(run.info.run_id, watcher, f"{beat} {boot_clock():.0f}")
                continue
            silent = boot_clock() - float(seen_at)
            if silent <= seconds(STALE_S):
                continue
            owner = f"process {pid} on {host}" if pid else f"the {tags.get(OWNER_TAG, 'train')} process"
            reason = (
                f"no heartbeat from {owner} for {int(silent)} s (seen from {me['pipeline.host']}): its process is gone"
            )
            stale_by = {STALE_TAG: me["pipeline.host"]}
        try:
            if stale_by:
                RunHandle(client, run.info.run_id).set_tags(stale_by)
            end_stage(client, run.info.run_id, tags.get(OWNER_TAG, "train"), "FAILED", reason)
        except MlflowException:  # not this user's to end (a reader): another stage will
            continue
        ended.append(run.info.run_id)
    return ended
