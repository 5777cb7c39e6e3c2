"""Plain field paths (`headers['x-github-event']`) read by dict lookups give what CEL gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow.errors import ExpressionError
from eventflow.expressions import (
    MISS,
    compile_expression,
    compile_template,
    field_path,
    read_path,
)

VARIABLES = frozenset({"headers", "body", "data", "events"})
# Field names include CEL's reserved words and keys only `['...']` can reach.
NAMES = st.sampled_from(["a", "b", "_x", "in", "null", "true", "x-y", "a.b", "", "é", "0"])
CONVERTIBLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=5),  # no lone surrogate
    st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    st.binary(max_size=3),
)
# Lone surrogates: CEL refuses a whole variable holding one anywhere.
SCALARS = CONVERTIBLE | st.sampled_from(["\ud800", "a\udfffb"])


def nested(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
        max_leaves=8,
    )


def step_source(name: str) -> str:
    if name.isidentifier() and name.isascii():
        return f".{name}"
    return f"['{name}']" if "'" not in name else f'["{name}"]'


def outcome(evaluate: Any) -> tuple[str, Any]:
    try:
        value = evaluate()
    except ExpressionError as error:
        return ("error", str(error))
    return ("value", canonical(value))


def canonical(value: Any) -> Any:
    """Comparable: NaN equals itself, 0 / 0.0 / -0.0 / False differ, map order is ignored."""
    if isinstance(value, dict):
        return sorted((repr(key), repr(canonical(item))) for key, item in value.items())
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return (type(value).__name__, repr(value))


@settings(max_examples=400, deadline=None)
@given(
    root=st.sampled_from(sorted(VARIABLES)),
    steps=st.lists(NAMES, max_size=4),
    value=st.dictionaries(NAMES, nested(CONVERTIBLE), max_size=4),
)
def test_a_field_path_gives_what_cel_gives(root: str, steps: list[str], value: Any) -> None:
    """On random nested data and paths, the lookup and CEL agree on the value or the error."""
    source = root + "".join(step_source(step) for step in steps)
    try:
        fast = compile_expression(source, VARIABLES)
    except ExpressionError:
        return  # CEL refuses the text itself (a reserved word as a field): no path to compare
    cel_only = type(fast)(fast.source, fast._program, fast._variables)  # the same, no lookup
    context = {root: value, "other": {"unread": object()}}
    assert outcome(lambda: fast.evaluate(context)) == outcome(lambda: cel_only.evaluate(context))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(NAMES, min_size=1, max_size=3), leaf=nested(SCALARS))
def test_a_path_that_exists_gives_what_cel_gives(steps: list[str], leaf: Any) -> None:
    """Paths that reach a value (of every kind CEL converts) agree with CEL."""
    source = "body" + "".join(step_source(step) for step in steps)
    try:
        fast = compile_expression(source, VARIABLES)
    except ExpressionError:
        return
    document: Any = leaf
    for step in reversed(steps):
        document = {step: document}
    cel_only = type(fast)(fast.source, fast._program, fast._variables)
    context = {"body": document}
    assert outcome(lambda: fast.evaluate(context)) == outcome(lambda: cel_only.evaluate(context))


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("headers['x-github-event']", ("headers", "x-github-event")),
        ('headers["x-github-event"]', ("headers", "x-github-event")),
        ("data.repository.full_name", ("data", "repository", "full_name")),
        ("events.upload.data.key", ("events", "upload", "data", "key")),
        ("body['a.b'].c", ("body", "a.b", "c")),
        ("body", ("body",)),
        ("body.a + 1", None),
        ("body . a", None),
        ("body[0]", None),
        ("has(body.a)", None),
        ("body['a\\'b']", None),
        ("size(body)", None),
    ],
)
def test_field_path_recognizes_only_plain_paths(source: str, path: tuple[str, ...] | None) -> None:
    """Only variable, `.name` and quoted-key steps without escapes or spaces are paths."""
    assert field_path(source) == path


def test_a_missing_header_fails_with_cels_own_message() -> None:
    """A miss goes to CEL, whose error the template reports as before."""
    template = compile_template("com.github.{{ headers['x-github-event'] }}", VARIABLES)
    assert template.render({"headers": {"x-github-event": "push"}}) == "com.github.push"
    with pytest.raises(ExpressionError) as failed:
        template.render({"headers": {}})
    assert str(failed.value) == "\"headers['x-github-event']\": no such key: x-github-event"


def test_values_cel_converts_are_left_to_cel() -> None:
    """Maps, lists, bytes, integers beyond int64 and lone surrogates are CEL's to answer."""
    expression = compile_expression("body.a", VARIABLES)
    assert expression._path == ("body", "a")
    for value in ({"b": 1}, [1], b"x", 2**64, "\ud800"):
        assert read_path(("body", "a"), {"body": {"a": value}}) is MISS
    assert expression.evaluate({"body": {"a": 2**64}}) == float(2**64)
    with pytest.raises(ExpressionError, match="Conversion Error"):
        expression.evaluate({"body": {"a": "\ud800"}})


def test_a_value_cel_cannot_convert_elsewhere_does_not_fail_the_path() -> None:
    """The one difference: CEL converts the whole variable, so a lone surrogate in a field
    the path does not read fails CEL; the lookup reads the field it was asked for."""
    expression = compile_expression("body.a", VARIABLES)
    assert expression.evaluate({"body": {"a": "x", "b": "\ud800"}}) == "x"
