"""requirements.txt pins must imply the security/feature floors the project relies on."""
from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"
FLOORS = {"mlflow": "3.10", "torch": "2.6"}


def pinned() -> dict[str, Requirement]:
    reqs = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            reqs[req.name.lower()] = req
    return reqs


def implied_minimum(req: Requirement) -> Version | None:
    """The lowest version the specifier allows, when it has a lower bound (==, ===, >=, >, ~=)."""
    lows = []
    for spec in req.specifier:
        if spec.operator in ("==", "===", ">=", ">", "~="):
            lows.append(Version(spec.version.removesuffix(".*")))
    return max(lows) if lows else None


def just_below(floor: str) -> str:
    major, minor = Version(floor).release[:2]
    return f"{major}.{minor - 1}.999"


@pytest.mark.parametrize("name, floor", FLOORS.items())
def test_pin_implies_floor(name, floor):
    reqs = pinned()
    assert name in reqs, f"{name} is not pinned in requirements.txt"
    low = implied_minimum(reqs[name])
    assert low is not None, f"{reqs[name]} has no lower bound"
    assert low >= Version(floor), f"{reqs[name]} allows versions below {floor}"
    # and the last release before the floor does not satisfy it
    assert not reqs[name].specifier.contains(just_below(floor))


def test_floor_check_would_catch_an_old_pin():
    assert implied_minimum(Requirement("mlflow==2.9.2")) < Version(FLOORS["mlflow"])
    assert implied_minimum(Requirement("torch>=2.1,<3")) < Version(FLOORS["torch"])
    assert implied_minimum(Requirement("torch<3")) is None


def test_installed_versions_meet_the_floors():
    from importlib.metadata import version
    for name, floor in FLOORS.items():
        assert Version(version(name)) >= Version(floor)
