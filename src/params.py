"""params.yaml -> frozen, typed, validated dataclasses. No defaults here: every key must be in the file.

Each field names a checker in its metadata; `load_params` walks the YAML against the dataclasses and
collects every problem (unknown key, missing key, wrong type, out of range) into one ParamsError.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from src.datasets import DATASETS
from src.errors import ExplainedError

BACKWARDS = ("manual-cpp", "manual", "autograd")  # train.backward's choices; src/train.py takes them from here


class ParamsError(ExplainedError, ValueError):
    """params.yaml is invalid; the message lists every offending key with what is allowed."""


class _Invalid(Exception):
    def __init__(self, allowed: str):
        self.allowed = allowed


class _InvalidAt(Exception):
    """A check across keys failed (raised from __post_init__)."""
    def __init__(self, key: str, allowed: str, value):
        self.key, self.allowed, self.value = key, allowed, value


# ---- checkers: value -> checked value, or raise _Invalid(description of what is allowed) -------------

def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(min_value: int):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < min_value:
            raise _Invalid(f"an integer >= {min_value}")
        return v
    return check


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None):
    bounds = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
              f"< {lt}" if lt is not None else ""]
    allowed = "a number " + " and ".join(b for b in bounds if b)

    def check(v):
        if isinstance(v, str) and _looks_numeric(v):
            raise _Invalid(f"{allowed} (YAML read {v!r} as a string: write it with a dot, e.g. 1.0e-3)")
        if not _is_number(v) or not math.isfinite(v):
            raise _Invalid(allowed)
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge) or (lt is not None and not v < lt):
            raise _Invalid(allowed)
        return float(v)
    return check


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def number_or_auto(*, gt: float | None = None):
    inner = number(gt=gt)

    def check(v):
        if v == "auto":
            return v
        try:
            return inner(v)
        except _Invalid as e:
            raise _Invalid(f"auto or {e.allowed}") from None
    return check


def choice(*options: str):
    def check(v):
        if v not in options:
            raise _Invalid("one of " + " | ".join(options))
        return v
    return check


def dataset_name(v):
    return choice(*DATASETS)(v)


def boolean(v):
    if not isinstance(v, bool):
        raise _Invalid("true or false")
    return v


def name_text(v):
    if not isinstance(v, str) or not v.strip():
        raise _Invalid("a non-empty string")
    return v


def int_list(*, min_len: int, item_min: int):
    def check(v):
        if not isinstance(v, list) or len(v) < min_len or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= item_min for i in v):
            raise _Invalid(f"a list of at least {min_len} integers, each >= {item_min}")
        return tuple(v)
    return check


def betas(v):
    if not (isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)):
        raise _Invalid("a list of two numbers in [0, 1)")
    return tuple(float(b) for b in v)


SOURCE_PATTERN = re.compile(r"^(torchvision(:https?://\S+)?|npm:\S+|dir:.+)$")
SOURCE_FORMS = "torchvision | torchvision:URL | npm:PACKAGE@VERSION | dir:PATH"


def source_lists(v):
    if not isinstance(v, dict) or not v:
        raise _Invalid(f"a mapping of dataset ({' | '.join(DATASETS)}) to a list of sources")
    out = {}
    for name, sources in v.items():
        if name not in DATASETS:
            raise _Invalid(f"dataset keys among {' | '.join(DATASETS)} (got {name!r})")
        if not isinstance(sources, list) or not sources or not all(
                isinstance(s, str) and SOURCE_PATTERN.match(s) for s in sources):
            raise _Invalid(f"for {name}: a non-empty list of sources, each {SOURCE_FORMS}")
        out[name] = tuple(sources)
    return out


def _check(fn):
    return field(metadata={"check": fn})


# ---- the schema: one frozen dataclass per section -----------------------------------------------------

@dataclass(frozen=True)
class NormalizeParams:
    mean: float | str = _check(number_or_auto())
    std: float | str = _check(number_or_auto(gt=0))


@dataclass(frozen=True)
class DataParams:
    dataset: str = _check(dataset_name)
    sources: dict = _check(source_lists)
    normalize: NormalizeParams = _check(None)

    def __post_init__(self):
        if self.dataset not in self.sources:
            raise _InvalidAt("data.sources", f"a source list for the chosen dataset {self.dataset!r}",
                             self.sources)


@dataclass(frozen=True)
class ModelParams:
    hidden_sizes: tuple = _check(int_list(min_len=1, item_min=1))
    activation: str = _check(choice("relu", "tanh", "sigmoid", "gelu"))


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _check(integer(1))
    batch_size: int = _check(integer(1))
    optimizer: str = _check(choice("sgd", "adam"))
    lr: float = _check(number(gt=0))
    momentum: float = _check(number(ge=0, lt=1))
    betas: tuple = _check(betas)
    weight_decay: float = _check(number(ge=0))
    eval_batch_size: int = _check(integer(1))
    threads: int = _check(integer(1))
    device: str = _check(choice("auto", "cpu", "cuda"))
    checkpoint: bool = _check(boolean)
    backward: str = _check(choice(*BACKWARDS))


@dataclass(frozen=True)
class PlotParams:
    misclassified: int = _check(integer(0))
    dpi: int = _check(integer(20))


@dataclass(frozen=True)
class TrackingParams:
    enabled: bool = _check(boolean)
    experiment: str = _check(name_text)
    log_model: bool = _check(boolean)


@dataclass(frozen=True)
class Params:
    seed: int = _check(integer(0))
    data: DataParams = _check(None)
    model: ModelParams = _check(None)
    train: TrainParams = _check(None)
    plot: PlotParams = _check(None)
    tracking: TrackingParams = _check(None)


def _build(cls, raw, prefix: str, errors: list[str]):
    if not isinstance(raw, dict):
        errors.append(f"{prefix or 'params.yaml'}: expected a mapping of keys, got {_show(raw)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key (allowed under {prefix.rstrip('.') or 'the top level'}: "
                          f"{', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            errors.append(f"{key}: missing (expected {_allowed(f.metadata['check'])})")
            continue
        check = f.metadata["check"]
        if check is None:  # a nested section
            values[name] = _build(_section_types[(cls, name)], raw[name], key + ".", errors)
            continue
        try:
            values[name] = check(raw[name])
        except _Invalid as e:
            errors.append(f"{key} = {_show(raw[name])}: expected {e.allowed}")
    if len(values) != len(fields) or any(v is None for v in values.values()):
        return None
    try:
        return cls(**values)
    except _InvalidAt as e:
        errors.append(f"{e.key} = {_show(e.value)}: expected {e.allowed}")
        return None


def _allowed(check) -> str:
    """What a key accepts, for the message about a missing key: its checker's own description."""
    if check is None:
        return "a mapping of keys"
    try:
        check(object())  # no checker accepts a bare object
    except _Invalid as e:
        return e.allowed
    return "a value"


def _show(v) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else repr(v)


_section_types = {
    (Params, "data"): DataParams, (Params, "model"): ModelParams, (Params, "train"): TrainParams,
    (Params, "plot"): PlotParams, (Params, "tracking"): TrackingParams,
    (DataParams, "normalize"): NormalizeParams,
}


def parse_params(raw, source: str = "params.yaml") -> Params:
    errors: list[str] = []
    params = _build(Params, raw, "", errors)
    if errors:
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  - {e}" for e in errors))
    return params


def load_params(path: str | Path) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ParamsError(f"cannot read {path}: {e}") from e
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, str]:
    """Every param as `section.key` -> string, the form MLflow stores (lists as JSON)."""
    out: dict[str, str] = {}

    def walk(obj, prefix):
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f"{prefix}{f.name}.")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = json.dumps(list(obj)) if isinstance(obj, tuple) else str(obj)
    walk(params, "")
    return out
