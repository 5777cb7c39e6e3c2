"""Turn one Kafka record into a CloudEvent: the pure core of the Kafka sensor.

Three shapes of record are understood, following the CloudEvents Kafka protocol binding:
- structured mode: a `content-type: application/cloudevents+json` header; the value is the
  JSON CloudEvent;
- binary mode: a `ce_specversion` header; attributes in `ce_*` headers, the value is the data
  (typed by the `content-type` header, else by `valueFormat`);
- any other record: the sensor's `event.*` templates make the attributes and `valueFormat`
  makes the data (defaults: type eventflow.kafka.record, source kafka://<topic>, subject the
  key, id <topic>/<partition>/<offset> so a redelivered record keeps its id).

A record that cannot become an event (larger than maxRecordBytes, not JSON when JSON is
expected, an invalid CloudEvent, a template that fails on it) raises `PoisonRecord`;
`poison_event` describes it as an event of type eventflow.kafka.poison. This module does no
I/O and knows no Kafka client: the sensor hands it a `KafkaRecord`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventflow.errors import InvalidEventError
from eventflow.events import JSON_CONTENT_TYPE, Event
from eventflow.sensing.binding import binary_event
from eventflow.sensing.templating import Defaults, render_attributes
from sensors.kafka.config import POISON_TYPE, KafkaConfig

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
BYTES_CONTENT_TYPE = "application/octet-stream"


class PoisonRecord(Exception):
    """A record that can never become an event; `reason` says why, for the poison event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A consumed record, as the sensor got it from the client."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp: datetime | None = None

    @property
    def position(self) -> str:
        """`<topic>/<partition>/<offset>`: where the record is, and its default event id."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def _essence(content_type: str | None) -> str | None:
    if content_type is None or not content_type.strip():
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(essence: str | None) -> bool:
    return essence == JSON_CONTENT_TYPE or (
        essence is not None
        and essence.startswith("application/")
        and essence.endswith("+json")
        and essence != STRUCTURED_CONTENT_TYPE
    )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which no other JSON reader downstream would.
    raise ValueError(f"{name} is not a JSON number")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonRecord(
            f"{what} is not valid UTF-8 text: {error.reason} at byte {error.start}"
        ) from error


def _json(raw: bytes, what: str) -> Any:
    text = _text(raw, what)
    if not text.strip():
        raise PoisonRecord(f"{what} is empty; a JSON value was expected")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise PoisonRecord(
            f"{what} is not valid JSON: {error.msg} at {error.lineno}:{error.colno}"
        ) from error
    except ValueError as error:
        raise PoisonRecord(f"{what} is not valid JSON: {error}") from error
    except RecursionError as error:
        raise PoisonRecord(f"{what} is not valid JSON: it is nested too deeply") from error


def _header_map(record: KafkaRecord) -> dict[str, bytes]:
    # Kafka allows a header name twice; the binding takes one value, so the last one wins.
    return {name.lower(): value for name, value in record.headers}


def _key_text(key: bytes | None) -> str | None:
    """The key as text; a key that is not UTF-8 is written in base64 so it survives."""
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key).decode("ascii")


def check_size(record: KafkaRecord, config: KafkaConfig) -> None:
    """Raise PoisonRecord when the value is larger than maxRecordBytes."""
    size = len(record.value or b"")
    if size > config.maxRecordBytes:
        raise PoisonRecord(
            f"value is {size} bytes, more than maxRecordBytes ({config.maxRecordBytes})"
        )


def normalize(record: KafkaRecord, config: KafkaConfig) -> Event:
    """The event a record carries; raise PoisonRecord when it can carry none. A record of
    valueFormat s3 is the sensor's to decode (`sensors.objectstore`), not this function's."""
    check_size(record, config)
    headers = _header_map(record)
    content_type = _header_text(headers, "content-type")
    essence = _essence(content_type)
    try:
        if essence == STRUCTURED_CONTENT_TYPE:
            document = _json(record.value or b"", "value")
            if not isinstance(document, dict):
                raise InvalidEventError("a structured CloudEvent is a JSON object")
            return Event.from_dict(document)
        if "ce_specversion" in headers:
            return _binary(record, headers, content_type, config)
        return _plain(record, config)
    except InvalidEventError as error:
        raise PoisonRecord(f"invalid CloudEvent: {error}") from error


def _header_text(headers: Mapping[str, bytes], name: str) -> str | None:
    raw = headers.get(name)
    return None if raw is None else _text(raw, f"header {name}")


def _formatted(record: KafkaRecord, config: KafkaConfig) -> tuple[Any, str | None]:
    """The data and its content type for a value read by `valueFormat`."""
    if record.value is None:
        return None, None  # a tombstone: the key was deleted
    if config.valueFormat == "json":
        return _json(record.value, "value"), JSON_CONTENT_TYPE
    if config.valueFormat == "text":
        return _text(record.value, "value"), TEXT_CONTENT_TYPE
    return record.value, BYTES_CONTENT_TYPE


def _binary(
    record: KafkaRecord,
    headers: Mapping[str, bytes],
    content_type: str | None,
    config: KafkaConfig,
) -> Event:
    attributes = [
        (name.removeprefix("ce_"), str(_header_text(headers, name)))
        for name in headers
        if name.startswith("ce_")
    ]
    essence = _essence(content_type)
    data: Any
    if content_type is None:
        data, content_type = _formatted(record, config)
    elif not record.value:
        data = None
    elif _is_json(essence):
        data = _json(record.value, "value")
    elif essence is not None and essence.startswith("text/"):
        data = _text(record.value, "value")
    else:
        data = record.value
    return binary_event(attributes, content_type=content_type, data=data)


def template_context(record: KafkaRecord, value: Any) -> dict[str, Any]:
    """What `event.*` templates see as `record`; `value` is the data as valueFormat made it."""
    return {
        "record": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": _key_text(record.key),
            "headers": {
                name: raw.decode("utf-8", errors="replace")
                for name, raw in _header_map(record).items()
            },
            # CEL templates see text: bytes go in as base64, as they would in JSON.
            "value": base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value,
            "timestamp": record.timestamp,
        }
    }


def _plain(record: KafkaRecord, config: KafkaConfig) -> Event:
    data, content_type = _formatted(record, config)
    defaults = Defaults(
        source=f"kafka://{record.topic}", subject=_key_text(record.key), id=lambda: record.position
    )
    attributes = render_attributes(
        config.event,
        template_context(record, data),
        defaults,
        what="record",
        failure=PoisonRecord,
    )
    return Event(
        type=attributes.type,
        source=attributes.source,
        subject=attributes.subject,
        id=attributes.id,
        time=record.timestamp,
        datacontenttype=content_type,
        data=data,
    )


def poison_event(record: KafkaRecord, reason: str) -> Event:
    """The eventflow.kafka.poison event for a record that cannot become an event."""
    return Event(
        type=POISON_TYPE,
        source=f"kafka://{record.topic}",
        subject=_key_text(record.key),
        # The record's position again: a poison record read twice gives one poison event id.
        id=record.position,
        time=record.timestamp,
        datacontenttype=JSON_CONTENT_TYPE,
        data={
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key_base64": None if record.key is None else base64.b64encode(record.key).decode(),
            "value_base64": (
                None if record.value is None else base64.b64encode(record.value).decode()
            ),
        },
    )
