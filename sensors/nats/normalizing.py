"""Turn one NATS message into a CloudEvent: the pure core of the NATS sensor.

Three shapes of message are understood, told apart by their headers (CloudEvents NATS
protocol binding):
- structured mode: `Content-Type: application/cloudevents+json`, the payload is the event;
- binary mode: a `ce-specversion` header; attributes in `ce-*` headers, `Content-Type` is the
  datacontenttype, the payload is the data;
- anything else: the payload read as `payloadFormat` is the data, and the sensor's `event.*`
  templates (over `msg.subject`, `msg.headers`, `msg.data`) give the attributes.

A message that can never become an event (too large, bad JSON, not a valid CloudEvent, a
template that fails on it) raises `PoisonMessage` with the reason; `poison_event` builds the
event that reports it. This module does no I/O and reads no clock: `now` and the id factory
are arguments. It does not subscribe, acknowledge or publish.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventflow.errors import InvalidEventError
from eventflow.events import JSON_CONTENT_TYPE, Event, new_event_id
from eventflow.sensing.binding import binary_event
from eventflow.sensing.templating import Defaults, render_attributes
from sensors.nats.config import NatsConfig

POISON_TYPE = "eventflow.nats.poison"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
MSG_ID_HEADER = "Nats-Msg-Id"
_CONTENT_TYPES = {
    "json": JSON_CONTENT_TYPE,
    "text": "text/plain; charset=utf-8",
    "base64": "application/octet-stream",
}


@dataclass(frozen=True, slots=True)
class NatsMessage:
    """A message as received; `stream` and `sequence` are set for JetStream messages."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: str | None = None
    sequence: int | None = None


class PoisonMessage(Exception):
    """A message that no retry will turn into an event; `reason` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def default_id(message: NatsMessage, new_id: Callable[[], str] = new_event_id) -> str:
    """Nats-Msg-Id, else `<stream>/<sequence>` (stable across redeliveries), else a new id."""
    msg_id = message.headers.get(MSG_ID_HEADER)
    if msg_id:
        return msg_id
    if message.stream is not None and message.sequence is not None:
        return f"{message.stream}/{message.sequence}"
    return new_id()


def check_size(message: NatsMessage, config: NatsConfig) -> None:
    """Raise PoisonMessage when the payload is larger than maxMessageBytes."""
    size, limit = len(message.data), config.maxMessageBytes
    if size > limit:
        raise PoisonMessage(f"payload is {size} bytes, more than maxMessageBytes ({limit})")


def normalize(
    message: NatsMessage,
    config: NatsConfig,
    now: datetime,
    new_id: Callable[[], str] = new_event_id,
) -> Event:
    """The event `message` carries; raise PoisonMessage when it can never carry one. A message
    of payloadFormat s3 is the sensor's to decode (`sensors.objectstore`), not this function's."""
    check_size(message, config)
    headers = {name.lower(): value for name, value in message.headers.items()}
    content_type = headers.get("content-type")
    essence = (content_type or "").split(";")[0].strip().lower()
    try:
        if essence == STRUCTURED_CONTENT_TYPE:
            return Event.from_dict(_parse_json(message.data, "a structured CloudEvent"))
        if "ce-specversion" in headers:
            return _binary(headers, message.data, content_type, essence)
    except InvalidEventError as error:
        raise PoisonMessage(f"not a valid CloudEvent: {error}") from error
    return _templated(message, config, now, new_id)


def poison_event(
    message: NatsMessage,
    reason: str,
    config: NatsConfig,
    now: datetime,
    new_id: Callable[[], str] = new_event_id,
) -> Event:
    """The `eventflow.nats.poison` event reporting `message`; its payload only if it fits."""
    data: dict[str, Any] = {
        "reason": reason,
        "subject": message.subject,
        "headers": dict(message.headers),
        "size": len(message.data),
    }
    if len(message.data) <= config.maxMessageBytes:
        data["payloadBase64"] = base64.b64encode(message.data).decode("ascii")
    return Event(
        id=f"poison/{default_id(message, new_id)}",
        source=f"nats://{message.subject}",
        type=POISON_TYPE,
        subject=message.subject,
        time=now,
        datacontenttype=JSON_CONTENT_TYPE,
        data=data,
    )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which no other JSON reader downstream would.
    raise ValueError(f"{name} is not a JSON number")


def _decode_text(payload: bytes, what: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonMessage(
            f"{what} is not UTF-8 text: {error.reason} at byte {error.start};"
            " set payloadFormat base64 for binary payloads"
        ) from error


def _parse_json(payload: bytes, what: str) -> Any:
    if not payload:
        raise PoisonMessage(f"payload is empty; {what} is a JSON value")
    text = _decode_text(payload, "payload")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise PoisonMessage(
            f"payload is not valid JSON ({what} expected): {error.msg}"
            f" at {error.lineno}:{error.colno}"
        ) from error
    except ValueError as error:
        raise PoisonMessage(f"payload is not valid JSON ({what} expected): {error}") from error
    except RecursionError as error:
        raise PoisonMessage("payload is not valid JSON: it is nested too deeply") from error


def _binary(
    headers: Mapping[str, str], payload: bytes, content_type: str | None, essence: str
) -> Event:
    attributes = [
        (name.removeprefix("ce-"), value)
        for name, value in headers.items()
        if name.startswith("ce-")
    ]
    return binary_event(attributes, content_type=content_type, data=_binary_data(payload, essence))


def _binary_data(payload: bytes, essence: str) -> Any:
    if not payload:
        return None
    if essence == JSON_CONTENT_TYPE or (
        essence.startswith("application/") and essence.endswith("+json")
    ):
        return _parse_json(payload, "the data of a JSON CloudEvent")
    if essence.startswith("text/"):
        return _decode_text(payload, "the data of a text CloudEvent")
    return payload


def _read_payload(payload: bytes, config: NatsConfig) -> tuple[Any, Any]:
    """(data for the event, data as templates see it) per payloadFormat."""
    if config.payloadFormat == "json":
        value = _parse_json(payload, "payloadFormat json expects a JSON value, so the payload")
        return value, value
    if config.payloadFormat == "text":
        text = _decode_text(payload, "payload")
        return text, text
    return payload, base64.b64encode(payload).decode("ascii")


def _templated(
    message: NatsMessage, config: NatsConfig, now: datetime, new_id: Callable[[], str]
) -> Event:
    data, seen = _read_payload(message.data, config)
    context = {"msg": {"subject": message.subject, "headers": dict(message.headers), "data": seen}}
    defaults = Defaults(
        source=f"nats://{message.subject}",
        subject=message.subject,
        id=lambda: default_id(message, new_id),
    )
    attributes = render_attributes(
        config.event, context, defaults, what="message", failure=PoisonMessage
    )
    return Event(
        type=attributes.type,
        source=attributes.source,
        subject=attributes.subject,
        id=attributes.id,
        time=now,
        datacontenttype=_CONTENT_TYPES[config.payloadFormat],
        data=data,
    )
