"""Helpers of the stage tests: the tiny dataset's paths and the stages called the way dvc.yaml calls them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests import synthetic


@dataclass
class Tiny:
    """The tiny dataset registered in this process, a folder serving it, and the paths of one pipeline run."""

    root: Path
    files: dict
    spec: object
    source_dir: Path
    paths: dict = field(default_factory=dict)

    def params(self, sources=None, name="params.yaml", **overrides) -> Path:
        """Write the tiny params (tracking off unless overridden) and return its path."""
        overrides = {"tracking.enabled": False, **overrides}
        params = synthetic.tiny_params(sources or [f"dir:{self.source_dir}"], **overrides)
        return synthetic.write_params(self.root / name, params)

    def path(self, key: str) -> str:
        return str(self.paths[key])


def staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".staging-" in p.name or p.name.endswith(".tmp"))


# ---- the stages, called the way dvc.yaml calls them -----------------------------------------------------


def run_download(tiny: Tiny, params: Path):
    from pipeline import download

    return download.main(["--params", str(params), "--out", tiny.path("raw")])


def preprocess_argv(tiny: Tiny, params: Path, raw: Path | None = None) -> list[str]:
    return [
        "--params",
        str(params),
        "--raw",
        str(raw or tiny.paths["raw"]),
        "--out",
        tiny.path("prepared"),
    ]


def run_preprocess(tiny: Tiny, params: Path, raw: Path | None = None):
    from pipeline import preprocess

    return preprocess.main(preprocess_argv(tiny, params, raw))


def run_train(tiny: Tiny, params: Path, model: Path | None = None, history: Path | None = None):
    from pipeline import train

    return train.main(
        [
            "--params",
            str(params),
            "--data",
            tiny.path("prepared"),
            "--model",
            str(model or tiny.paths["model"]),
            "--history",
            str(history or tiny.paths["history"]),
            "--run-file",
            tiny.path("run_file"),
        ]
    )


def evaluate_argv(tiny: Tiny, params: Path, model: Path | None = None) -> list[str]:
    return [
        "--params",
        str(params),
        "--data",
        tiny.path("prepared"),
        "--model",
        str(model or tiny.paths["model"]),
        "--metrics",
        tiny.path("metrics"),
        "--per-class",
        tiny.path("per_class"),
        "--confusion",
        tiny.path("confusion"),
        "--predictions",
        tiny.path("predictions"),
        "--run-file",
        tiny.path("run_file"),
    ]


def run_evaluate(tiny: Tiny, params: Path, model: Path | None = None):
    from pipeline import evaluate

    return evaluate.main(evaluate_argv(tiny, params, model))


def plot_argv(tiny: Tiny, params: Path) -> list[str]:
    return [
        "--params",
        str(params),
        "--data",
        tiny.path("prepared"),
        "--model",
        tiny.path("model"),
        "--history",
        tiny.path("history"),
        "--confusion",
        tiny.path("confusion"),
        "--predictions",
        tiny.path("predictions"),
        "--out",
        tiny.path("plots"),
        "--run-file",
        tiny.path("run_file"),
    ]


def run_plot(tiny: Tiny, params: Path):
    from pipeline import plot

    return plot.main(plot_argv(tiny, params))


def packages_imported_by(tiny: Tiny, stage: str, argv: list[str]) -> list[str]:
    """Run pipeline.<stage>.main(argv) in a fresh interpreter (this one has torch and mlflow loaded) with the
    tiny dataset registered there too; return the top-level packages that process imported."""
    code = (
        "import sys\nfrom mnist_softmax.core.datasets import DatasetSpec, register\n"
        + synthetic.registration_code(tiny.files)
        + f"from pipeline.{stage} import main\nmain({argv!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    # the test's own working folder (relative outputs land there), the project on the import path
    env = {**os.environ, "PYTHONPATH": f"{synthetic.ROOT / 'src'}:{synthetic.ROOT}"}  # this tree's code
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tiny.root / "work",
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])
