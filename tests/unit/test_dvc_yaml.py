"""dvc.yaml names what each stage runs: every package module a stage imports (but those that only shape
messages, and run tracking) is a dep of that stage, and every dep exists."""

from __future__ import annotations

import pytest

from tests.harness import ROOT, STAGES, package_imports, read_yaml

PACKAGE = "mnist_softmax"
NOT_DEPS = (
    "mnist_softmax.cli",
    "mnist_softmax.errors",
    "mnist_softmax.tracking",
)  # messages, MLflow


KERNELS = "${same_kernels} "  # dvc.yaml's vars: the CPU kernels every stage computing with torch pins


def is_dep(module: str) -> bool:
    return not any(module == n or module.startswith(n + ".") for n in NOT_DEPS)


def source(module: str) -> str:
    return "src/" + module.replace(".", "/") + ".py"


def imported_modules(path) -> set[str]:
    """The package's modules a file imports (a package's __init__ is no dep)."""
    return {m for m in package_imports(path) if m.startswith(PACKAGE + ".") and (ROOT / source(m)).is_file()}


def closure(start: set[str]) -> set[str]:
    """The modules `start` imports, and theirs, but not through the modules that are no deps."""
    seen: set[str] = set()
    todo = [m for m in start if is_dep(m)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [m for m in imported_modules(ROOT / source(name)) if is_dep(m)]
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_are_the_modules_it_runs(stage):
    spec = read_yaml(ROOT / "dvc.yaml")["stages"][stage]
    code_deps = {d for d in spec["deps"] if d.endswith(".py")}
    used = closure(imported_modules(ROOT / "pipeline" / f"{stage}.py"))
    assert code_deps == {f"pipeline/{stage}.py", *(source(m) for m in used)}
    assert spec["cmd"].removeprefix(KERNELS).startswith(f"PYTHONPATH=src python -m pipeline.{stage} ")
    for dep in spec["deps"]:
        assert (ROOT / dep).exists() or dep.startswith(("data/", "models/", "metrics/")), dep


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_that_computes_with_torch_pins_the_same_cpu_kernels(stage):
    spec = read_yaml(ROOT / "dvc.yaml")
    files = [ROOT / "pipeline" / f"{stage}.py"] + [
        ROOT / source(m) for m in closure(imported_modules(ROOT / "pipeline" / f"{stage}.py"))
    ]
    uses_torch = any(m == "torch" or m.startswith("torch.") for f in files for m in package_imports(f))
    assert spec["stages"][stage]["cmd"].startswith(KERNELS) == uses_torch
    assert {"same_kernels": "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT"} in spec["vars"]
