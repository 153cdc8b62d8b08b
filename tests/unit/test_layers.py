"""The package's layers, as docs/architecture.md draws them: the course's core imports neither run tracking nor
the team's tools, only tracking imports mlflow, the stages use tracking's interface only, and no modules
import each other in a cycle (function-level imports included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import ROOT, package_imports

PACKAGE = ROOT / "src" / "mnist_softmax"
# A layer may import the layers before it, never those after it.
ORDER = ["mnist_softmax.core", "mnist_softmax.tracking", "mnist_softmax.team"]
SHARED = ("mnist_softmax.cli", "mnist_softmax.errors", "mnist_softmax.fileio")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): package_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {module: {name for name in names if name in MODULES and name != module} for module, names in MODULES.items()}


def layer(module: str) -> int | None:
    return next((i for i, name in enumerate(ORDER) if module == name or module.startswith(name + ".")), None)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_before_it(module):
    mine = layer(module)
    later = {
        name for name in MODULES[module] if (theirs := layer(name)) is not None and (mine is None or theirs > mine)
    }
    assert not later, f"{module} imports {sorted(later)} from a later layer"


def test_only_tracking_imports_mlflow():
    importers = {m for m, names in MODULES.items() if any(n == "mlflow" or n.startswith("mlflow.") for n in names)}
    assert importers and all(layer(m) == 1 for m in importers), sorted(importers)


def test_shared_modules_import_no_layer():
    for module in SHARED:
        assert not [n for n in MODULES[module] if layer(n) is not None], module


def test_the_stages_use_the_tracking_interface_only():
    """pipeline/<stage>.py opens tracking through mnist_softmax.tracking, never MLflow or tracking's modules."""
    for stage in sorted((ROOT / "pipeline").glob("*.py")):
        names = package_imports(stage)
        assert not [n for n in names if n.startswith("mlflow")], stage.name
        used = {n for n in names if n in MODULES and layer(n) == 1}
        assert used <= {"mnist_softmax.tracking"}, (stage.name, used)


def test_no_import_cycles():
    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        for name in sorted(EDGES[module]):
            if found := cycle_from(name, [*path, module]):
                return found
        return None

    cycles = [c for m in sorted(EDGES) if (c := cycle_from(m, []))]
    assert not cycles, " -> ".join(cycles[0])
