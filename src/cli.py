"""What every stage's __main__ shares: clean one-paragraph errors, SIGTERM treated as Ctrl-C."""
from __future__ import annotations

import gc
import signal
import sys
import traceback
from typing import Callable

from src.errors import ExplainedError
from src.mkl import use_strict_cnr


class StageError(ExplainedError, RuntimeError):
    """A failure a stage explains itself."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run(main: Callable[[list[str] | None], object], name: str) -> int:
    """Run a stage's main() as a program, which ends right after: exit 0, or 1 with a clear message, 130 when
    interrupted."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    use_strict_cnr()  # before the stage's first matrix product: the same bits for any train.threads
    try:
        main(None)
        return 0
    except KeyboardInterrupt as e:
        print(f"{name}: interrupted ({str(e) or 'Ctrl-C'})", file=sys.stderr)  # str: the object is truthy
        return 130
    except ExplainedError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        traceback.print_exc()
        print(f"{name}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        # Python's shutdown garbage-collects every object torch and MLflow created (0.5-1 s a process on
        # 2 cores); frozen objects are skipped. atexit handlers, flushes and module teardown still run.
        gc.freeze()
