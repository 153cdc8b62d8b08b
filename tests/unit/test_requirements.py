"""pyproject.toml's pins must imply the security/feature floors the project relies on, and pin everything."""

from __future__ import annotations

import tomllib
from typing import cast

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.harness import ROOT

FLOORS = {"mlflow": "3.10", "torch": "2.6"}


def pinned() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return {r.name.lower(): r for r in reqs}


def implied_minimum(req: Requirement) -> Version | None:
    """The lowest version the specifier allows, when it has a lower bound (==, ===, >=, >, ~=)."""
    lows = [
        Version(s.version.removesuffix(".*")) for s in req.specifier if s.operator in ("==", "===", ">=", ">", "~=")
    ]
    return max(lows) if lows else None


def just_below(floor: str) -> str:
    major, minor = Version(floor).release[:2]
    return f"{major}.{minor - 1}.999"


@pytest.mark.parametrize("name, floor", FLOORS.items())
def test_pin_implies_floor(name, floor):
    reqs = pinned()
    assert name in reqs, f"{name} is not pinned in pyproject.toml"
    low = implied_minimum(reqs[name])
    assert low is not None, f"{reqs[name]} has no lower bound"
    assert low >= Version(floor), f"{reqs[name]} allows versions below {floor}"
    assert not reqs[name].specifier.contains(just_below(floor))


def test_every_dependency_is_pinned_exactly():
    loose = [str(r) for r in pinned().values() if [s.operator for s in r.specifier] != ["=="]]
    assert loose == []


def test_floor_check_would_catch_an_old_pin():
    # both have a lower bound: a Version, not None
    assert cast(Version, implied_minimum(Requirement("mlflow==2.9.2"))) < Version(FLOORS["mlflow"])
    assert cast(Version, implied_minimum(Requirement("torch>=2.1,<3"))) < Version(FLOORS["torch"])
    assert implied_minimum(Requirement("torch<3")) is None


def test_installed_versions_are_the_pins():
    from importlib.metadata import version

    for name, req in pinned().items():
        assert req.specifier.contains(version(name).split("+")[0]), (name, version(name))
