"""mnist_softmax.cli.run: a stage's main() as a program: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT

PROGRAM = """
import atexit, sys
from mnist_softmax.cli import run, StageError

def main(argv):
    {body}

atexit.register(lambda: print("atexit ran", flush=True))
sys.exit(run(main, "demo"))
"""


# A real Ctrl-C that lands while Python runs a __del__ (as it can in a weakref callback or the garbage
# collector): Python swallows the KeyboardInterrupt there, and main() returns as if nothing happened.
SWALLOWED = (
    "import os, signal, time\n"
    "    class Finalized:\n"
    "        def __del__(self):\n"
    "            os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)\n"
    "    Finalized()\n"
    "    print('main went on')"
)


@pytest.mark.parametrize(
    "body, code, stderr",
    [
        ("print('ok')", 0, ""),
        ("raise StageError('bad input')", 1, "demo: error: bad input"),
        ("raise ValueError('boom')", 1, "demo: error: ValueError: boom"),
        ("raise KeyboardInterrupt()", 130, "demo: interrupted (Ctrl-C)"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
            130,
            "demo: interrupted (signal SIGTERM)",
        ),
        (SWALLOWED, 130, "demo: interrupted (Ctrl-C)"),  # and no "Exception ignored ... KeyboardInterrupt"
    ],
)
def test_run_exits_with_its_code_and_message(body, code, stderr):
    """Every outcome keeps its exit code and one-line message (a traceback only for an unexplained error);
    a successful run prints nothing on stderr; atexit handlers run."""
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(body=body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert stderr in done.stderr if stderr else done.stderr == ""
    assert ("Traceback" in done.stderr) == ("ValueError" in body)
    assert done.stdout.splitlines()[-1] == "atexit ran"
