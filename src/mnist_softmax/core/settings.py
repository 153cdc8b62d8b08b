"""Settings files (params.yaml, a sweep file): YAML read as DVC reads it, validated by strict pydantic models,
and every problem refused at once in one message naming the key, the value and what is allowed.

Reading with ruamel.yaml's safe loader (what DVC uses, YAML 1.2) means a value is what `dvc params diff` and
`dvc exp show` report: `1e-3` is a float, `010` is 10, `yes` is a string. pydantic's own errors are turned
into one line per problem here; the models say what is allowed (types, bounds, choices).
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, YAMLError

from mnist_softmax.errors import ExplainedError

MAX_FILE_BYTES = 64 << 10  # params.yaml is ~2 KB: a larger file is not a settings file
MAX_DEPTH = 8  # params.yaml nests 4 deep
MAX_PROBLEMS = 20  # listed in one message; the rest are counted


class ParamsError(ExplainedError, ValueError):
    """A settings file is invalid; the message lists every offending key with what is allowed."""


class StrictModel(BaseModel):
    """Unknown keys forbidden, strict types, frozen: what every settings file's sections are."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _field_at(loc: tuple, root: type[BaseModel]):
    """The pydantic FieldInfo a location names (None past a list index or dict key)."""
    model, info = root, None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def _describe(annotation, metadata=()) -> str:
    """What a field accepts, in words, from its type and constraints."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _describe(args[0], (*metadata, *args[1:]))
    metadata = [c for m in metadata for c in (m.metadata if isinstance(m, FieldInfo) else [m])]
    bounds = [
        f"{sym} {getattr(m, name)}"
        for m in metadata
        for name, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(m, name, None) is not None
    ]
    where = f" {' and '.join(bounds)}" if bounds else ""
    if origin is Literal:
        return " | ".join(map(str, args)) if len(args) == 1 else "one of " + " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of " + ", ".join(annotation.model_fields)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, str(annotation)) + where


def _show(value) -> str:
    """The value as the message shows it: at most 80 characters, whatever its size."""
    if isinstance(value, (dict, list)) and len(value) > 20:
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _looks_numeric(value) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _is_union(info) -> bool:
    annotation = info.annotation if info else None
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _problem(error: ErrorDetails, root: type[BaseModel], pattern_words: dict[str, str]) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    if len(loc) > 1 and _is_union(_field_at(loc[:-1], root)):  # one of a union's members: speak of the field
        loc = loc[:-1]
        kind = "union"
    key = ".".join(map(str, loc)) or "params.yaml"
    info = _field_at(loc, root)
    if kind == "union":
        return f"{key} = {_show(value)}: expected {_describe(info.annotation)}"
    if kind == "missing":
        return f"{key}: missing (expected {_describe(info.annotation, info.metadata) if info else 'a value'})"
    if kind == "extra_forbidden":
        section = _field_at(loc[:-1], root).annotation if len(loc) > 1 else root
        return (
            f"{key}: unknown key (allowed under {'.'.join(map(str, loc[:-1])) or 'the top level'}: "
            f"{', '.join(section.model_fields)})"
        )
    message = error["msg"].removeprefix("Value error, ").replace("Tuple should", "The list should")
    if kind == "model_type":
        message = f"expected {_describe(info.annotation) if info else 'a mapping'}"
    elif kind == "string_pattern_mismatch" and (words := pattern_words.get(str(error.get("ctx", {}).get("pattern")))):
        message = f"expected {words}"
    if _looks_numeric(value):
        message += " (it is a quoted string in params.yaml: write the number without quotes)"
    return f"{key} = {_show(value)}: {message}"


def validate(model: type[BaseModel], raw, source: str, pattern_words: dict[str, str] | None = None):
    """`raw` as a `model`, or a ParamsError listing every problem: key, value, what is allowed.
    `pattern_words`: a string pattern -> what it allows, in words."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        # A list whose items failed is also "too short after validation": the items' errors say it all.
        errors = [
            err
            for err in errors
            if err["type"] not in ("too_short", "too_long")
            or not any(other["loc"][: len(err["loc"])] == err["loc"] and other is not err for other in errors)
        ]
        problems = list(dict.fromkeys(_problem(err, model, pattern_words or {}) for err in errors))
        more = len(problems) - MAX_PROBLEMS
        listed = problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in listed)) from None


def _check_shape(yaml: YAML, text: str) -> None:
    """Refuse aliases (a few lines of them expand to gigabytes) and deep nesting before building anything."""
    depth = 0
    for event in yaml.parse(text):
        kind = type(event).__name__
        if kind == "AliasEvent":
            raise ValueError(
                f"a YAML alias (*{event.anchor}, line {event.start_mark.line + 1}): aliases are"
                " not allowed in settings files"
            )
        depth += kind in ("MappingStartEvent", "SequenceStartEvent")
        depth -= kind in ("MappingEndEvent", "SequenceEndEvent")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1})")


def read_yaml(path: str | Path):
    """A YAML file as DVC reads it (ruamel.yaml's safe loader, YAML 1.2; a duplicate key is an error), if it
    is at most MAX_FILE_BYTES, without aliases and at most MAX_DEPTH deep."""
    path = Path(path)
    yaml = YAML(typ="safe")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than a params file's {MAX_FILE_BYTES}")
        text = path.read_text()
        _check_shape(yaml, text)
        return yaml.load(text)
    except ValueError as e:  # ours above, or a number too long for Python to convert
        raise ParamsError(f"cannot read {path}: {e}") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ParamsError(f"cannot read {path}: {getattr(e, 'problem', None) or e}{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"cannot read {path}: {e}") from None
