"""A sweep trial's experiment (`dvc exp run ...`, team/sweep.py) as a process group of its own, under a guard
bound to its worker:

    python -m mnist_softmax.team.sweep_trial dvc exp run ...

The group can be interrupted as a whole (pruning, the worker interrupted) without interrupting the worker.
The worker holds the guard's stdin open while the trial runs: when it closes (the worker died, even by
kill -9), the guard interrupts the group as Ctrl-C does, and kills it after STOP_S."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

STOP_S = 30  # an interrupted experiment's time to end its runs before its group is killed


@contextlib.contextmanager
def trial_process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """The experiment under its guard, its output in the Popen's stdout; stopped if the block raises."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_softmax.team.sweep_trial", *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdin is not None  # stdin=PIPE
    try:
        yield proc
        proc.wait()
    except BaseException:
        stop(proc)
        raise
    finally:
        proc.stdin.close()


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C to the experiment's group: its stage ends its MLflow run KILLED."""
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(proc.pid, signal.SIGINT)


def stop(proc: subprocess.Popen) -> None:
    interrupt(proc)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _watch(child: subprocess.Popen) -> None:
    sys.stdin.buffer.read()  # until EOF: the worker closed it, or died
    if child.poll() is None:
        os.killpg(0, signal.SIGINT)
        try:
            child.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    # after the start, which would pass it on: Ctrl-C is for the experiment, this process reports its exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch, args=(child,), daemon=True).start()
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    # os._exit: the interpreter's shutdown would fail on the watcher thread, blocked reading stdin
    os._exit(main(sys.argv[1:]))
