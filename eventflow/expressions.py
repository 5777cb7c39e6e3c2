"""CEL expressions and `{{ expr }}` string templates: compiled once at load, evaluated per event.

User text is data, never code: CEL has no I/O, no loops beyond bounded comprehensions over the
input, and no access to Python. This module is pure; it does not know which variables a given
place offers: callers pass `variables`, and a reference to anything else is a load-time error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cel

from eventflow.errors import ExpressionError

_TEMPLATE_PART = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


# A field path: a variable, then `.field` or `['key']` / `["key"]` steps, no spaces or escapes.
_FIELD_PATH = re.compile(
    r"([_A-Za-z][_A-Za-z0-9]*)((?:\.[_A-Za-z][_A-Za-z0-9]*|\['[^'\\\r\n]*'\]|\[\"[^\"\\\r\n]*\"\])*)"
)
_PATH_STEP = re.compile(r"\.([_A-Za-z][_A-Za-z0-9]*)|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_INT64 = range(-(2**63), 2**63)
_INDEXING = {"_[_]"}


def field_path(source: str) -> tuple[str, ...] | None:
    """`headers['x-github-event']` -> ("headers", "x-github-event"); None if not a plain path."""
    match = _FIELD_PATH.fullmatch(source)
    if match is None:
        return None
    steps = [
        next(group for group in step.groups() if group is not None)
        for step in _PATH_STEP.finditer(match.group(2))
    ]
    return (match.group(1), *steps)


MISS = object()
"""What `read_path` answers when CEL must: the caller then evaluates with CEL."""


def read_path(path: tuple[str, ...], context: Mapping[str, Any]) -> Any:
    """The value at `path` when reading it is plain dict lookups and CEL would give back the
    same value; `MISS` otherwise (a key missing, a step into a non-dict, a value CEL would
    convert), leaving the answer, or the error, to CEL."""
    value: Any = context
    for step in path:
        if type(value) is not dict:  # CEL reads only dicts as maps; a Mapping may convert
            return MISS
        value = value.get(step, MISS)
        if value is MISS:
            return MISS
    kind = type(value)
    if kind is str:
        # CEL refuses a string with a lone surrogate (it cannot become UTF-8).
        return value if value.isascii() or _encodes(value) else MISS
    if kind is int:
        return value if value in _INT64 else MISS  # beyond int64 CEL answers a double
    if kind is bool or kind is float or value is None:
        return value
    return MISS  # lists, maps, bytes, times: CEL's conversions decide


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression."""

    source: str
    _program: Any
    # The variables the expression refers to: only those are handed to CEL, which converts
    # each one whole on every call (a webhook body it never reads cost ~1 ms).
    _variables: frozenset[str] = frozenset()
    # Set when the expression is a plain field path such as `headers['x-github-event']`: such
    # a read is done by dict lookups (a CEL call costs ~20 us, most of it converting the
    # variable), CEL being called only when the lookup cannot answer as CEL would. One
    # difference: CEL fails on a variable holding a value it cannot convert (a lone surrogate)
    # anywhere in it; the lookup reads only the field asked for.
    _path: tuple[str, ...] | None = None

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self._path is not None:
            value = read_path(self._path, context)
            if value is not MISS:
                return value
        try:
            return self._program.execute(
                {name: context[name] for name in self._variables if name in context}
            )
        except Exception as error:  # the CEL runtime raises several builtin types
            raise ExpressionError(f"{self.source!r}: {_runtime_message(error)}") from error

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Evaluate a condition; anything but a boolean result is an error."""
        result = self.evaluate(context)
        if not isinstance(result, bool):
            raise ExpressionError(
                f"{self.source!r}: a condition must give true or false, it gave"
                f" {type(result).__name__} {result!r}"
            )
        return result


def _runtime_message(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no such key: {error.args[0] if error.args else error}"
    return str(error).split("\n", 1)[0]


def compile_expression(source: str, variables: frozenset[str]) -> Expression:
    """Compile `source`; raise ExpressionError if it is malformed or names an unknown variable."""
    if not source.strip():
        raise ExpressionError("empty expression")
    try:
        program = cel.compile(source)
    except ValueError as error:
        detail = str(error).split("ERROR: <input>:", 1)[-1].split("\n", 1)[0]
        raise ExpressionError(f"{source!r} is not valid CEL: {detail.strip()}") from error
    unknown = sorted(set(program.references()["variables"]) - variables)
    if unknown:
        raise ExpressionError(
            f"{source!r} refers to {', '.join(unknown)}, which is not defined here;"
            f" available: {', '.join(sorted(variables))}"
        )
    references = program.references()
    path = field_path(source)
    if path is not None and (
        references["variables"] != [path[0]] or not set(references["functions"]) <= _INDEXING
    ):
        path = None  # CEL does not read it as a path after all: it keeps it
    return Expression(source, program, frozenset(references["variables"]), path)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Template:
    """A string with `{{ expr }}` parts; literal text around them is kept as written."""

    source: str
    _parts: tuple[str | Expression, ...]

    @property
    def is_literal(self) -> bool:
        return all(isinstance(part, str) for part in self._parts)

    def render(self, context: Mapping[str, Any]) -> str:
        """Render to text: strings as they are, numbers and booleans as CEL writes them,
        lists and maps as compact JSON, null as empty."""
        return "".join(
            part if isinstance(part, str) else _as_text(part.evaluate(context))
            for part in self._parts
        )


def compile_template(source: str, variables: frozenset[str]) -> Template:
    parts: list[str | Expression] = []
    position = 0
    for match in _TEMPLATE_PART.finditer(source):
        if match.start() > position:
            parts.append(source[position : match.start()])
        parts.append(compile_expression(match.group(1).strip(), variables))
        position = match.end()
    rest = source[position:]
    if "{{" in rest:
        raise ExpressionError(f"{source!r}: '{{{{' without a closing '}}}}'")
    if rest:
        parts.append(rest)
    return Template(source, tuple(parts))
