"""The tracking interface the stages use (Run, Tracker) and its no-op version for tracking off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class Run(Protocol):
    """What a stage logs into (tracker.RunHandle, or NullRun)."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: dict[str, str]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, name: str, digest: str, path: str, context: str) -> None: ...
    def log_model(self, model: Any, arch: dict, preprocessing: dict, input_example: Any) -> None: ...
    def set_model_hash(self, model_sha256: str) -> None: ...


class Tracker(Protocol):
    def training_run(
        self, run_name: str | None, params: dict[str, str], tags: dict[str, str]
    ) -> contextlib.AbstractContextManager[Run]: ...

    def attached_run(self, model_sha256: str, stage: str) -> contextlib.AbstractContextManager[Run]: ...


class NullRun:
    """Tracking off: records nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, str]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dataset(self, name: str, digest: str, path: str, context: str) -> None:
        pass

    def log_model(self, model: Any, arch: dict, preprocessing: dict, input_example: Any) -> None:
        pass

    def set_model_hash(self, model_sha256: str) -> None:
        pass


class NullTracker:
    """Tracking off (`tracking.enabled: false`): every run is a NullRun."""

    @contextlib.contextmanager
    def training_run(self, run_name: str | None, params: dict[str, str], tags: dict[str, str]) -> Iterator[Run]:
        yield NullRun()

    @contextlib.contextmanager
    def attached_run(self, model_sha256: str, stage: str) -> Iterator[Run]:
        yield NullRun()
