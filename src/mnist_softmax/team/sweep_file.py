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
import hashlib
import json
import re
import shutil
import tempfile
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
            elif lands := settings_problems(params_path, [override(key, value)], {key: value}):
                problems.append(f"space.{key} = {value!r}: {lands[0]}")
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


def override(key: str, value: Any) -> str:
    """`key=value` for `dvc exp run -S`, in Hydra's override grammar: a string quoted, so that a comma, a
    bracket or a word like `null` stays a string (settings_problems checks that it reads back the same)."""
    if isinstance(value, str):
        # in a quoted value, a quote and the backslashes before it (or at the end) are escaped
        quoted = re.sub(r"(\\*)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
        return f"{key}='{quoted}'"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}"


def dvc_would_write(params_path: str | Path, settings: list[str]) -> dict:
    """params.yaml as `dvc exp run -S SETTING ...` writes it: DVC's own code (Hydra's override parser, then
    OmegaConf, which resolves interpolations) applied to a copy, read back as the stages read it."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copied = Path(tmp) / "params.yaml"
        shutil.copyfile(params_path, copied)
        apply_overrides(copied, settings)
        return read_yaml(copied)


def settings_problems(params_path: str | Path, settings: list[str], intended: dict[str, Any]) -> list[str]:
    """Why `dvc exp run -S` with `settings` would not write a valid params.yaml holding exactly the values
    checked: `intended` (key -> value) for its keys, for any other setting the value Hydra's grammar reads
    from it as written. A comma list (a Hydra sweep), an interpolation (`${oc.env:...}`: the worker's
    environment), an unbalanced quote: each is refused; the value that would land is never shown (it may
    be a secret)."""
    from dvc.utils.hydra import to_hydra_overrides

    try:
        parsed = to_hydra_overrides(settings)
    except Exception as e:  # hydra's OverrideParseException
        return [f"-S {' -S '.join(settings)}: not one value in DVC's -S grammar ({str(e).splitlines()[0]})"]
    problems, expected = [], {}
    for setting, o in zip(settings, parsed, strict=True):
        if o.is_sweep_override():
            problems.append(f"-S {setting}: a list of values (a Hydra sweep), not one value")
        elif not (o.is_add() or o.is_delete() or o.is_force_add()):
            key = o.key_or_group
            expected[key] = intended[key] if key in intended else o.value()
    if problems:
        return problems
    try:
        landed = dvc_would_write(params_path, settings)
    except Exception as e:  # DVC's InvalidArgumentError, wrapping Hydra's or OmegaConf's error
        why = f"{e}: {e.__cause__}" if e.__cause__ else str(e)
        return [f"-S {' -S '.join(settings)}: DVC refuses it ({' '.join(why.split())})"]
    for setting, o in zip(settings, parsed, strict=True):
        key = o.key_or_group
        if key in expected and json.dumps(dotted(landed, key)) != json.dumps(expected[key]):
            problems.append(
                f"-S {setting}: DVC would write another value into params.yaml (Hydra's override grammar or"
                " OmegaConf's interpolation reads it differently)"
            )
    if not problems:
        try:
            parse_params(landed)
        except ParamsError as e:
            problems += [line.removeprefix("  - ") for line in str(e).splitlines()[1:]]
    return problems


def dotted(tree: Any, key: str) -> Any:
    """The value at a dotted key of a params tree, None when there is none."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


HEARTBEAT_KEY, SET_KEY, PARAMS_KEY = "--heartbeat", "--set", "params.yaml outside the space (sha256)"


def fingerprint(
    sweep: SweepFile, heartbeat_s: int | None = None, fixed: list[str] | None = None, params_path=None
) -> dict:
    """What every worker of one study must agree on: all of the sweep file but the study's name, the trial
    heartbeat's interval (one worker's grace period must not fail another's healthy trials), the --set values
    and the params.yaml the trials start from (its keys outside the space, hashed)."""
    found = sweep.model_dump(mode="json", exclude={"study"})
    found[HEARTBEAT_KEY], found[SET_KEY] = heartbeat_s, list(fixed or [])
    if params_path is not None:
        found[PARAMS_KEY] = params_hash(params_path, list(sweep.space))
    return found


def params_hash(params_path: str | Path, swept: list[str]) -> str:
    """The sha256 of params.yaml as read, the swept keys left out (each trial sets those)."""
    tree = read_yaml(params_path)
    for key in swept:
        *parents, last = key.split(".")
        node = dotted(tree, ".".join(parents)) if parents else tree
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def differences(study: dict, mine: dict, prefix: str = "") -> list[str]:
    """Each key whose value differs between the study's fingerprint and this worker's, with both values."""
    found = []
    for key in sorted(set(study) | set(mine), key=str):
        a, b = study.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: the study's is {json.dumps(a)}, this worker's {json.dumps(b)}")
    return found


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
    """The metric's value; ValueError, naming what there is, when the metrics do not hold a number there."""
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            there = ", ".join(map(str, node)) if isinstance(node, dict) else type(node).__name__
            raise ValueError(f"no metric {dotted} (there is: {there})")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise ValueError(f"metric {dotted} is not a number: {node!r}")
    return float(node)
