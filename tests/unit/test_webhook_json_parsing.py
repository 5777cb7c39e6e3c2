"""A webhook body read by orjson is read as Python's json reads it, refusals worded the same."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow import jsoncodec
from eventflow.jsoncodec import may_hold_big_integer
from sensors.webhook.normalizing import (
    MediaType,
    RequestError,
    _parse_json,
    _parse_json_keeping_text,
    _parse_json_text,
)
from tests.conftest import FIXTURES
from tests.json_fragments import JSON_FRAGMENTS

JSON = MediaType("application/json", "application/json", None)
UTF8 = MediaType("application/json; charset=utf-8", "application/json", "utf-8")
BYTES = ["\xff", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"]


def outcome(parse: Any, body: bytes, media: MediaType) -> tuple[str, str]:
    try:
        value = parse(body, media)
    except RequestError as error:
        return ("refused", f"{error.status} {error.message}")
    # repr keeps 1 and 1.0, 0.0 and -0.0, an int and its float apart; NaN equals itself.
    return ("value", repr(value))


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.sampled_from(JSON_FRAGMENTS), max_size=12).map(
        lambda parts: "".join(parts).encode()
    ),
    st.lists(st.sampled_from(BYTES), max_size=1).map(
        lambda parts: "".join(parts).encode("latin-1")
    ),
    st.sampled_from([JSON, UTF8]),
)
def test_a_body_parses_as_json_parses_it(text: bytes, raw: bytes, media: MediaType) -> None:
    """Random near-JSON: the same value, of the same types, or the same refusal."""
    for body in filter(None, (text, text + raw, raw + text)):  # an empty body: its own message
        assert outcome(_parse_json, body, media) == outcome(_parse_json_text, body, media)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.sampled_from(JSON_FRAGMENTS), max_size=12).map(
        lambda parts: "".join(parts).encode()
    ),
    st.sampled_from([JSON, UTF8]),
)
def test_a_body_kept_as_text_reads_back_as_its_value(body: bytes, media: MediaType) -> None:
    """The text an event writes for its data instead of the value: it reads back the same."""
    try:
        value, text = _parse_json_keeping_text(body, media)
    except RequestError:
        return
    if text is not None:
        assert text is body
        assert repr(jsoncodec.loads(text)) == repr(value)


@pytest.mark.parametrize(
    ("body", "media", "kept"),
    [
        (b' {"a": [1, 2.5, "\\u00e9"]}\n', JSON, True),
        (b'{"n": 18446744073709551616}', JSON, False),
        (b'{"big": 1e400}', JSON, False),
        (b'["\\ud800"]', JSON, False),
        (
            b'{"a": "\xe9"}',
            MediaType("application/json; charset=latin-1", "application/json", "latin-1"),
            False,
        ),
    ],
)
def test_only_text_orjson_read_is_kept(body: bytes, media: MediaType, kept: bool) -> None:
    """What json alone reads (a huge integer, 1e400, a lone surrogate, other charsets) is not."""
    value, text = _parse_json_keeping_text(body, media)
    assert value == _parse_json_text(body, media)
    assert (text is not None) is kept


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    ),
    st.booleans(),
)
def test_a_json_document_parses_to_what_json_gives(document: Any, indent: bool) -> None:
    """Valid JSON, integers of any size and floats of any exponent included."""
    body = json.dumps(document, indent=2 if indent else None, ensure_ascii=False).encode()
    assert outcome(_parse_json, body, JSON) == outcome(_parse_json_text, body, JSON)


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"n": 18446744073709551616}', {"n": 2**64}),
        (b"[-9223372036854775809]", [-(2**63) - 1]),
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b'{"big": 1e400}', {"big": float("inf")}),
        (b'"\\ud800"', "\ud800"),
    ],
)
def test_values_orjson_would_read_otherwise_keep_jsons_reading(body: bytes, value: Any) -> None:
    """Huge integers stay exact, 1e400 stays infinity, a lone surrogate escape stays."""
    assert repr(_parse_json(body, JSON)) == repr(value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"NaN", "body is not valid JSON: NaN is not a JSON number"),
        (b"[1, -Infinity]", "body is not valid JSON: -Infinity is not a JSON number"),
        (
            b'{"a": 1,}',
            "body is not valid JSON: Expecting property name enclosed in double quotes at 1:9",
        ),
        (b"\xef\xbb\xbf{}", "body is not valid JSON: Expecting value at 1:1"),
        (b'{"a": "\xff"}', "body is not valid utf-8 text: invalid start byte at byte 7"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON: it is nested too deeply"),
    ],
)
def test_refusals_keep_their_words(body: bytes, message: str) -> None:
    """What json refuses is refused with json's message."""
    with pytest.raises(RequestError) as refused:
        _parse_json(body, JSON)
    assert (refused.value.status, refused.value.message) == (400, message)


@pytest.mark.parametrize(
    ("body", "maybe"),
    [
        (b"12345678901234567890", True),
        (b'{"a":\n  -12345678901234567890}', True),
        (b"[1, 1234567890123456789]", True),
        (b'{"sha": "0000000000000000000000000000000000000000"}', False),
        (b'{"a": 1.12345678901234567890}', False),
        (b'{"a": 123456789012345678}', False),
    ],
)
def test_a_long_integer_where_a_value_starts_is_noticed(body: bytes, maybe: bool) -> None:
    """19 digits starting a value send the body to json; digits inside a string do not."""
    assert may_hold_big_integer(body) is maybe


def test_the_github_push_is_read_by_orjson() -> None:
    """The fixture's all-zero `before` SHA does not look like a huge integer."""
    body = (FIXTURES / "github" / "push--payload.json").read_bytes()
    assert not may_hold_big_integer(body)
    assert _parse_json(body, JSON) == json.loads(body)
