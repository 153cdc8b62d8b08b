"""What a stage tells its guard (guard.py) before it ends, one JSON line on the guard's stdin: "done" when the
stage recorded its outcome itself, else the outcome it could not write. No word: the stage was killed."""

from __future__ import annotations

import json

DONE = {"status": "done"}


def encode(word: dict[str, str]) -> bytes:
    return json.dumps(word).encode() + b"\n"


def decode(text: bytes) -> dict[str, str] | None:
    """The last word in what the guard read (None: there is none)."""
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        word = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return word if isinstance(word, dict) else None
