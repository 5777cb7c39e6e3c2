"""Bus payloads: written and read by orjson where it agrees with json, by json elsewhere."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow import jsoncodec
from eventflow.errors import InvalidEventError
from eventflow.events import Event, ReceivedEvent, keeping_data_text
from tests.json_fragments import JSON_FRAGMENTS

STAMP = datetime(2024, 5, 6, tzinfo=UTC)


def outcome(payload: bytes) -> tuple[str, str]:
    try:
        return ("value", repr(jsoncodec.loads(payload)))
    except ValueError as error:
        return ("refused", f"{type(error).__name__}: {error}")


def reference(payload: bytes) -> tuple[str, str]:
    try:
        return ("value", repr(json.loads(payload)))
    except ValueError as error:
        return ("refused", f"{type(error).__name__}: {error}")


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from(JSON_FRAGMENTS), max_size=10),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32-le"]),
)
def test_loads_reads_what_json_reads(pieces: list[str], encoding: str) -> None:
    """The same value (types and all) or the same refusal, in every encoding json detects."""
    payload = "".join(pieces).encode(encoding, "surrogatepass")
    assert outcome(payload) == reference(payload)


@pytest.mark.parametrize(
    "data",
    [
        {"n": 2**70, "m": -(2**64)},
        {"big": float("inf"), "nan": float("nan")},
        {"text": "é \u2028 \U0001f600"},
        [1, 1.0, -0.0, True, None],
    ],
)
def test_an_encoded_event_decodes_to_the_same_event(data: Any) -> None:
    """Huge integers, non-finite floats and non-ASCII text survive the bus."""
    event = ReceivedEvent(Event(id="1", source="/s", type="t", data=data), "hooks", STAMP)
    decoded = ReceivedEvent.decode(event.encode())
    assert repr(decoded) == repr(event)


def test_a_payload_that_is_not_json_keeps_its_message() -> None:
    """The refusal names json's reason after the usual prefix."""
    with pytest.raises(InvalidEventError) as refused:
        ReceivedEvent.decode(b'{"id": ')
    assert (
        str(refused.value) == "bus payload is not JSON: Expecting value: line 1 column 8 (char 7)"
    )


def reference_encode(event: ReceivedEvent) -> bytes:
    """What json alone writes (escaped to ASCII: a lone surrogate, which has no UTF-8, still
    travels, as an escape json reads back)."""
    document = event.event.to_dict()
    document["eventflowsensor"] = event.sensor
    document["eventflowreceived"] = "2024-05-06T00:00:00Z"
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def written(encode: Any, event: ReceivedEvent) -> tuple[str, str]:
    try:
        payload = encode(event)
    except (ValueError, TypeError) as error:  # UnicodeEncodeError is a ValueError
        return ("refused", type(error).__name__)
    # repr tells 1 from 1.0 and -0.0 from 0.0; the top-level members may come in any order.
    return ("payload", repr(sorted(json.loads(payload).items())))


DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=4)
    | st.sampled_from(["\ud800", datetime(2024, 1, 1, tzinfo=UTC), uuid.UUID(int=1), (1, 2)]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.dictionaries(st.integers(0, 3), inner, max_size=2)
    ),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(DATA)
def test_encode_writes_what_json_wrote(data: Any) -> None:
    """Any data: a payload json reads back as before, or the same kind of refusal."""
    event = ReceivedEvent(Event(id="1", source="/s", type="t", data=data), "hooks", STAMP)
    assert written(ReceivedEvent.encode, event) == written(reference_encode, event)


def test_a_cycle_is_refused_as_json_refuses_it() -> None:
    """A document that contains itself is json's ValueError, not a hang."""
    data: dict[str, Any] = {}
    data["self"] = data
    event = ReceivedEvent(Event(id="1", source="/s", type="t", data=data), "hooks", STAMP)
    with pytest.raises(ValueError, match="Circular reference detected"):
        event.encode()


def test_deep_nesting_is_written_by_json() -> None:
    """Deeper than orjson writes: json writes it, and it reads back."""
    data: list[Any] = []
    inner = data
    for _ in range(300):
        inner.append([])
        inner = inner[0]
    event = ReceivedEvent(Event(id="1", source="/s", type="t", data=data), "hooks", STAMP)
    assert ReceivedEvent.decode(event.encode()) == event


def kept_as_text(text: bytes) -> Event:
    return keeping_data_text(
        Event(id="1", source="/s", type="t", data=jsoncodec.loads(text), extensions={"x": 1}),
        text,
    )


@pytest.mark.parametrize(
    "text", [b'{"a": [1, 2.5, "\\u00e9 \xc3\xa9"], "a": 3}', b" [true, null]\n", b'"text"', b"0"]
)
def test_data_kept_as_text_is_written_as_it_came_and_reads_back_the_same(text: bytes) -> None:
    """Whitespace, escapes and a repeated key are kept; the payload decodes to the same event."""
    event = ReceivedEvent(kept_as_text(text), "hooks", STAMP)
    payload = event.encode()
    assert text in payload
    assert json.loads(payload) == json.loads(
        ReceivedEvent(
            Event(id="1", source="/s", type="t", data=event.event.data, extensions={"x": 1}),
            "hooks",
            STAMP,
        ).encode()
    )
    assert ReceivedEvent.decode(payload) == event
    assert json.loads(event.event.to_json()) == event.event.to_dict()


def test_other_data_does_not_carry_the_old_text() -> None:
    """`replace` makes an event of other data: it is encoded from its value."""
    changed = replace(kept_as_text(b'{"old": true}'), data={"new": True})
    assert changed.data_text is None
    assert json.loads(changed.to_json())["data"] == {"new": True}


def test_a_bus_payload_ending_with_its_data_keeps_the_datas_text() -> None:
    """What `encode` writes: the consumer's event writes the data's text, not a new encoding."""
    sent = ReceivedEvent(kept_as_text(b'{"k": [1, 2] }'), "hooks", STAMP)
    received = ReceivedEvent.decode(sent.encode())
    assert received == sent
    assert received.event.data_text == b'{"k": [1, 2] }'
    assert (
        ReceivedEvent.decode(
            ReceivedEvent(Event(id="1", source="/s", type="t", data={"k": 1}), "h", STAMP).encode()
        ).event.data_text
        == b'{"k":1}'
    )


STAMPS = '"eventflowsensor":"h","eventflowreceived":"2024-05-06T00:00:00Z"'


@pytest.mark.parametrize(
    ("payload", "data"),
    [
        ('{"data":{"a":1},"specversion":"1.0","id":"1","source":"/s","type":"t",%s}', {"a": 1}),
        ('{"specversion":"1.0","id":"1","source":"/s","type":"t",%s,"data":1,"data":2}', 2),
        ('{"specversion":"1.0","id":"1","source":"/s","type":"t",%s,"data":null}', None),
        (
            '{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":",\\"data\\":",%s}',
            None,
        ),
    ],
)
def test_payloads_written_otherwise_read_as_json_reads_them(payload: str, data: Any) -> None:
    """Data first, a repeated data member (the last one counts), null data, a subject holding
    `,"data":`: the event json would read, and no text kept."""
    encoded = (payload % STAMPS).encode()
    event = ReceivedEvent.decode(encoded)
    assert event.event.data == data
    assert event.event.data_text is None
    assert event.event.to_dict() == {
        key: value
        for key, value in json.loads(encoded).items()
        if key not in ("eventflowsensor", "eventflowreceived") and value is not None
    }


@pytest.mark.parametrize(
    "payload",
    [
        b'{,"data":1}',
        b'{ ,"data":1}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t",,"data":1}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1 } {}',
    ],
)
def test_a_payload_that_only_splits_into_json_is_refused(payload: bytes) -> None:
    """Two parts that each read as JSON do not make a whole that does not."""
    with pytest.raises(InvalidEventError) as raised:
        ReceivedEvent.decode(payload)
    assert str(raised.value).startswith("bus payload is not JSON: ")


@pytest.mark.parametrize(
    "text", [b'{"a": [1, 2.5, "\\u00e9"], "big": 123456789012345678901234}', b" [true, null]\n"]
)
def test_data_already_read_is_read_on_first_use_as_the_bus_reads_it(text: bytes) -> None:
    """An intake worker's event: the same event as the bus reads, its data read when asked
    for (big integers as json reads them), its text written as it came."""
    payload = ReceivedEvent(kept_as_text(text), "hooks", STAMP).encode()
    deferred = ReceivedEvent.decode(payload, data_read=True)
    assert deferred.event.data_text == text
    assert deferred.event.data == json.loads(text)
    assert deferred == ReceivedEvent.decode(payload)
    assert deferred.encode() == payload
    assert replace(deferred.event, subject="s").data == json.loads(text)


def test_data_already_read_is_not_read_until_asked_for() -> None:
    """Text that is not JSON (which no intake worker sends) shows when it is read: not by
    decoding, nor by storing it, only by asking for the data."""
    payload = b'{"specversion":"1.0","id":"1","source":"/s","type":"t",%s,"data":[1,}' % (
        STAMPS.encode()
    )
    deferred = ReceivedEvent.decode(payload, data_read=True)
    assert deferred.event.to_json().endswith(b',"data":[1,}')
    with pytest.raises(ValueError, match="Expecting value"):
        _ = deferred.event.data
    with pytest.raises(InvalidEventError):
        ReceivedEvent.decode(payload)


def test_payloads_without_data_at_the_end_read_the_same_when_already_read() -> None:
    """Data first, null or base64: nothing to defer, the event json would read."""
    for payload in (
        '{"data":{"a":1},"specversion":"1.0","id":"1","source":"/s","type":"t",%s}',
        '{"specversion":"1.0","id":"1","source":"/s","type":"t",%s,"data":null}',
        '{"specversion":"1.0","id":"1","source":"/s","type":"t",%s,"data_base64":"AAE="}',
    ):
        encoded = (payload % STAMPS).encode()
        event = ReceivedEvent.decode(encoded, data_read=True)
        assert event == ReceivedEvent.decode(encoded)
        assert event.event.data_text is None
