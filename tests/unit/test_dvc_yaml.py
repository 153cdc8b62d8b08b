"""dvc.yaml names what each stage runs: every package module a stage imports (but those that only shape
messages or MLflow) is a dep of that stage, and every dep exists."""
from __future__ import annotations

import ast

import pytest

from tests.harness import ROOT, STAGES, read_yaml

PACKAGE = "mnist_softmax"
NOT_DEPS = {"cli", "errors", "tracking", "mlflow_tracker", "run_guard", "served_model"}  # messages, MLflow


def imported_modules(path) -> set[str]:
    """The package modules a file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def closure(start: set[str]) -> set[str]:
    """The modules `start` imports, and theirs, but not through the modules that are no deps."""
    seen, todo = set(), list(start - NOT_DEPS)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(ROOT / "src" / PACKAGE / f"{name}.py") - NOT_DEPS
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_are_the_modules_it_runs(stage):
    spec = read_yaml(ROOT / "dvc.yaml")["stages"][stage]
    code_deps = {d for d in spec["deps"] if d.endswith(".py")}
    used = closure(imported_modules(ROOT / "pipeline" / f"{stage}.py"))
    assert code_deps == {f"pipeline/{stage}.py", *(f"src/{PACKAGE}/{m}.py" for m in used)}
    assert spec["cmd"].startswith(f"PYTHONPATH=src python -m pipeline.{stage} ")
    for dep in spec["deps"]:
        assert (ROOT / dep).exists() or dep.startswith(("data/", "models/", "metrics/")), dep
