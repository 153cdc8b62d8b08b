"""What every stage's __main__ shares: clean one-paragraph errors, SIGTERM treated as Ctrl-C."""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable

from mnist_softmax.errors import ExplainedError


class StageError(ExplainedError, RuntimeError):
    """A failure a stage explains itself."""


_received: list[str] = []  # the interrupting signals this process got


def _interruption(name: str) -> KeyboardInterrupt:
    return KeyboardInterrupt("" if name == "SIGINT" else f"signal {name}")


def _raise_interrupt(signum, frame):
    _received.append(signal.Signals(signum).name)
    raise _interruption(signal.Signals(signum).name)


def raise_if_interrupted() -> None:
    """Python ignores an exception raised inside a weakref callback or a __del__: a Ctrl-C landing there is
    swallowed and the work goes on. What is about to record success asks here first."""
    if _received:
        raise _interruption(_received[-1])


def _unraisable(info) -> None:
    """An interrupt Python swallowed is counted (_received), not printed as a traceback."""
    if not isinstance(info.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(info)


def run(main: Callable[[list[str] | None], object], name: str) -> int:
    """Run a stage's main() as a program: exit 0, or 1 with a clear message, 130 when interrupted."""
    sys.unraisablehook = _unraisable
    for interrupting in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(interrupting) is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays so
            signal.signal(interrupting, _raise_interrupt)
    try:
        main(None)
        raise_if_interrupted()
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
