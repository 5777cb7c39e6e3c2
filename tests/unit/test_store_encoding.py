"""What the store hands its drivers: JSON columns through orjson, UTC times for driver SQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from eventflow import jsoncodec
from eventflow.store.tables import UtcDateTime, driver_utc
from tests.conftest import FIXTURES

# Each is something orjson alone would refuse, or write or read otherwise than json.
UNUSUAL_VALUES: list[Any] = [
    {"above": 2**64, "below": -(2**63) - 1, "in": [2**63 - 1, -(2**63)]},
    {"lone": "\ud800"},
    {2: "int", None: "null", True: "bool", 1.5: "float"},
    {"zeros": "0" * 40, "digits": "1" * 30, "fraction": 1.0123456789012345678901},
]
TEXTS_JSON_WROTE = [
    '{"a": NaN, "b": [Infinity, -Infinity]}',
    '"\\ud800"',
    '{"n": 123456789012345678901234567890}',
    "[-9999999999999999999, 18446744073709551616]",
    '{"sha": "0000000000000000000000000000000000000000", "n": 18446744073709551616}',
]


@pytest.mark.parametrize("value", UNUSUAL_VALUES)
def test_json_columns_write_and_read_unusual_values_as_json_did(value: Any) -> None:
    """Big integers, lone surrogates and non-string keys survive as they did with json."""
    expected = json.loads(json.dumps(value))
    assert json.loads(jsoncodec.dumps_text(value)) == expected
    assert jsoncodec.loads(jsoncodec.dumps_text(value)) == expected


@pytest.mark.parametrize("text", TEXTS_JSON_WROTE)
def test_text_that_json_wrote_is_read_as_json_read_it(text: str) -> None:
    """Rows written before orjson (NaN, surrogate escapes, big integers) read the same."""
    assert json.dumps(jsoncodec.loads(text)) == json.dumps(json.loads(text))


def test_a_github_push_document_round_trips() -> None:
    """A real webhook payload comes back equal, through orjson both ways."""
    document = json.loads((FIXTURES / "github" / "push--payload.json").read_text())
    assert jsoncodec.loads(jsoncodec.dumps_text(document)) == document


def test_an_unserializable_value_is_refused_with_a_type_error() -> None:
    """What no JSON encoder takes is refused, as json refused it."""
    with pytest.raises(TypeError):
        jsoncodec.dumps_text({"a": object()})


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
        datetime(2024, 6, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ],
)
def test_driver_times_are_what_the_utc_column_binds(value: datetime) -> None:
    """Rows inserted through the driver hold the very text (SQLite) or instant (PostgreSQL)
    that SQLAlchemy's UtcDateTime binds, so they compare and sort with every other row."""
    dialect = sqlite.dialect()
    bind = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    assert driver_utc("sqlite")(value) == bind(value)
    bound = UtcDateTime().process_bind_param(value, postgresql.dialect())
    assert driver_utc("postgresql")(value) == bound
