"""What every stage's __main__ shares: clean one-paragraph errors, SIGTERM treated as Ctrl-C."""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable

from mnist_softmax.errors import ExplainedError


class StageError(ExplainedError, RuntimeError):
    """A failure a stage explains itself."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run(main: Callable[[list[str] | None], object], name: str) -> int:
    """Run a stage's main() as a program: exit 0, or 1 with a clear message, 130 when interrupted."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
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
