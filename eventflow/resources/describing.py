"""Describing pydantic validation errors as messages a user can act on.

`describe_errors` turns the errors of `model.model_validate(data)` into (field path, message)
pairs: each message names what is wrong, shows the bad value as it was written in YAML and
says what is accepted; the failed alternatives of one union become one message. `dotted` and
`show` format a field path and a value the same way for every other message about resources.

It does not validate anything itself, know files or lines (`loading.py` locates each path),
or check what spans documents (`validation.py`). It does no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

FieldPath = tuple[str | int, ...]

_SHOWN_VALUE_CHARS = 60
_PATTERNS = {
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "lowercase letters, digits and '-', starting and"
    " ending with a letter or digit",
    r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$": "lowercase letters, digits, '-' and '_', starting"
    " and ending with a letter or digit",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and '_', not starting with a digit",
}
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def dotted(path: FieldPath) -> str:
    """('spec', 'steps', 1, 'retries') -> 'spec.steps[1].retries'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened when long."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bool) or value is None or isinstance(value, dict | list):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        return text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


@dataclass(frozen=True, slots=True)
class _Failure:
    path: FieldPath
    union_at: FieldPath | None  # where a union (or a dict key) was tried, if one was
    expected: str | None  # "an integer", when the failure is a wrong type
    message: str


def describe_errors(
    error: ValidationError, model: type[BaseModel], data: Any, prefix: FieldPath = ()
) -> list[tuple[FieldPath, str]]:
    """Pydantic errors of `model.model_validate(data)` -> (field path, message to a user).

    Each message says what is wrong and what is accepted. The failed alternatives of one
    union are told as one message; `prefix` is prepended to every path.
    """
    failures = [_failure(details, model, data) for details in error.errors()]
    described: list[tuple[FieldPath, str]] = []
    unions: dict[FieldPath, list[_Failure]] = {}
    for failure in failures:
        if failure.union_at is None:
            described.append((failure.path, failure.message))
        else:
            unions.setdefault(failure.union_at, []).append(failure)
    for group in unions.values():
        # An alternative that got further (a list whose items failed) is the one meant.
        depth = max(len(failure.path) for failure in group)
        deepest: dict[FieldPath, list[_Failure]] = {}
        for failure in group:
            if len(failure.path) == depth:
                deepest.setdefault(failure.path, []).append(failure)
        for path, alternatives in deepest.items():
            described.append((path, _either(alternatives, _value_at(data, path))))
    return [(prefix + path, message) for path, message in described]


def _either(alternatives: list[_Failure], value: Any) -> str:
    expected = list(dict.fromkeys(f.expected for f in alternatives if f.expected is not None))
    if len(expected) < len(alternatives) or len(expected) == 1:
        return "; or ".join(dict.fromkeys(f.message for f in alternatives))
    return f"expected {', '.join(expected[:-1])} or {expected[-1]}, got {show(value)}"


def _failure(details: ErrorDetails, model: type[BaseModel], data: Any) -> _Failure:
    path: list[str | int] = []
    union_at: FieldPath | None = None
    current = data
    loc = details["loc"]
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(current, dict) and (
            part in current or (last and details["type"] == "missing")
        ):
            path.append(part)
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif union_at is None:
            union_at = tuple(path)
    kind = details["type"]
    value = details["input"]
    expected = _EXPECTED.get(kind)
    if kind == "extra_forbidden":
        known = _known_fields(model, tuple(path[:-1]))
        message = f"unknown field {show(path[-1])}" + (
            f"; known fields: {', '.join(known)}" if known else ""
        )
    elif kind == "missing":
        message = "required field missing"
    elif expected is not None:
        message = f"expected {expected}, got {show(value)}"
    else:
        message = _constraint_message(details)
    return _Failure(tuple(path), union_at, expected, message)


def _constraint_message(details: ErrorDetails) -> str:
    kind, value, ctx = details["type"], details["input"], details.get("ctx", {})
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {show(value)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx["pattern"])
        return f"expected {_PATTERNS.get(pattern, f'text matching {pattern}')}, got {show(value)}"
    if kind == "string_too_short":
        return f"expected at least {ctx['min_length']} characters, got {show(value)}"
    if kind == "string_too_long":
        return f"expected at most {ctx['max_length']} characters, got {show(value)}"
    if kind in ("too_short", "too_long"):
        bound = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        items = "item" if bound == 1 else "items"
        word = "least" if kind == "too_short" else "most"
        # pydantic stops counting a mapping at the limit; the input still has its length.
        actual = len(value) if isinstance(value, dict | list) else ctx["actual_length"]
        return f"expected at {word} {bound} {items}, got {actual}"
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return f"expected a number {sign} {ctx[key]}, got {show(value)}"
    if kind == "value_error":
        return str(ctx["error"])
    return f"{details['msg']}, got {show(value)}"


def _value_at(data: Any, path: FieldPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _known_fields(model: type[BaseModel], path: FieldPath) -> list[str]:
    current: Any = model
    for part in path:
        current = _child_type(current, part)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _child_type(annotation: Any, part: str | int) -> Any:
    """The type at `annotation[part]`, or None when it cannot be told."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _child_type(get_args(annotation)[0], part)
    if origin is Union or type(annotation).__name__ == "UnionType":
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _child_type(members[0], part) if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    if origin is list:
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    return None
