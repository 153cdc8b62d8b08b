"""The sweep file: the study's name, the objective (a metric of evaluate's metrics file and its direction),
the trial budget, the search space over params.yaml keys and optional pruning. Validated like params.yaml,
and every value of the space must be one params.yaml accepts there.

    study: lr-momentum
    objective: {metric: test_loss, direction: minimize}
    trials: 24
    space:
      train.lr: {type: float, low: 0.001, high: 0.3, log: true}
      train.batch_size: {type: categorical, choices: [32, 64, 128]}
    pruning: {warmup_epochs: 3}        # optional: median pruning on the per-epoch metric
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from mnist_softmax.core.history import PRINTED
from mnist_softmax.core.params import flatten, parse_params
from mnist_softmax.core.settings import ParamsError, StrictModel, read_yaml, validate


class FloatRange(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntRange(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False


class Categorical(StrictModel):
    type: Literal["categorical"]
    choices: Annotated[list[str | int | float | bool], Field(min_length=1, max_length=100)]


class Objective(StrictModel):
    metric: str = Field(pattern=r"^[\w.-]+$")  # a key of metrics/eval.json; dots go into its mappings
    direction: Literal["maximize", "minimize"]


class Pruning(StrictModel):
    warmup_epochs: int = Field(ge=0, le=1000)  # epochs every trial runs before it may be pruned


class SweepFile(StrictModel):
    study: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")  # also the prefix of its DVC experiments' names
    objective: Objective
    trials: int = Field(ge=1, le=10_000)
    space: Annotated[
        dict[str, Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]],
        Field(min_length=1, max_length=50),
    ]
    pruning: Pruning | None = None

    @model_validator(mode="after")
    def _ranges(self):
        for key, dim in self.space.items():
            if not isinstance(dim, Categorical) and not dim.low < dim.high:
                raise ValueError(f"space.{key}: low must be below high")
        if self.pruning and self.objective.metric not in PRINTED:
            raise ValueError(
                f"pruning needs an objective the train stage reports every epoch"
                f" ({' | '.join(PRINTED)}), not {self.objective.metric}"
            )
        return self


def load_sweep(path: str | Path, params_path: str | Path) -> SweepFile:
    """The sweep file, validated; each key of its space must be a params.yaml key, and its bounds and choices
    values params.yaml accepts there."""
    sweep = validate(SweepFile, read_yaml(path), str(path))
    raw = read_yaml(params_path)
    keys = flatten(parse_params(raw, str(params_path)))
    problems = []
    for key, dim in sweep.space.items():
        if key not in keys:
            problems.append(f"space.{key}: not a key of {params_path}")
            continue
        for value in dim.choices if isinstance(dim, Categorical) else (dim.low, dim.high):
            if why := refused(raw, key, value):
                problems.append(f"space.{key} = {value!r}: params.yaml would refuse it ({why})")
    if problems:
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
    return sweep


def refused(raw: dict, key: str, value) -> str | None:
    """Why params.yaml's `raw` with `key` set to `value` is invalid, or None when it is fine."""
    tried = copy.deepcopy(raw)
    *parents, last = key.split(".")
    node: object = tried
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return f"{key} is not a key of params.yaml"
    node[last] = value
    try:
        parse_params(tried)
    except ParamsError as e:
        return str(e).splitlines()[1].removeprefix("  - ")
    return None


def suggest(trial, sweep: SweepFile) -> dict:
    values = {}
    for key, dim in sweep.space.items():
        if isinstance(dim, FloatRange):
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntRange):
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        else:
            values[key] = trial.suggest_categorical(key, dim.choices)
    return values


def metric_of(metrics: dict, dotted: str) -> float:
    node: Any = metrics
    for part in dotted.split("."):
        node = node[part]
    return float(node)
