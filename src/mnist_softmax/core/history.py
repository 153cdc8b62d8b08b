"""The training history: the per-epoch JSON file train writes (DVC's plots and the PNGs read it), and the
line the train stage prints after each epoch (a sweep's pruning reads it). Both formats live only here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_softmax.fileio import read_json, write_json_atomic

_EPOCH_LINE = re.compile(r"^epoch +(\d+)/\d+ +train_loss \S+ +test_loss (\S+) +test_accuracy (\S+)%")
PRINTED = ("test_loss", "test_accuracy")  # the metrics parse_epoch_line gives back


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def write_history(path: str | Path, history: list[EpochResult]) -> None:
    """No timings in the file: it must be byte-identical for the same params, data and threads."""
    write_json_atomic(path, [{k: v for k, v in h.as_dict().items() if k != "seconds"} for h in history])


def read_history(path: str | Path) -> list[dict]:
    """[{epoch, train_loss, test_loss, test_accuracy}, ...] in epoch order."""
    return read_json(path)


def epoch_line(r: EpochResult, epochs: int) -> str:
    return (
        f"epoch {r.epoch:>3}/{epochs}  train_loss {r.train_loss:.4f}  test_loss {r.test_loss:.4f}"
        f"  test_accuracy {100 * r.test_accuracy:.2f}%  ({r.seconds:.1f} s)"
    )


def parse_epoch_line(line: str) -> tuple[int, dict[str, float]] | None:
    """(epoch, {test_loss, test_accuracy}) of a line epoch_line made, else None."""
    m = _EPOCH_LINE.match(line)
    if not m:
        return None
    return int(m.group(1)), {
        "test_loss": float(m.group(2)),
        "test_accuracy": float(m.group(3)) / 100,
    }
