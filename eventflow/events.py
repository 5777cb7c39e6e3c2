"""CloudEvents 1.0 in eventflow: what a sender claims (`Event`) and what eventflow stamped on
arrival (`ReceivedEvent`).

This module is pure: it (de)serializes the structured JSON form that travels on the bus and
validates the required attributes. It does not know HTTP, Kafka or NATS bindings; the sensors
map those onto `Event`.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventflow import jsoncodec
from eventflow.errors import InvalidEventError

SPEC_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
# Extension names eventflow stamps on arrival; the spec asks for lowercase alphanumerics.
SENSOR_EXTENSION = "eventflowsensor"
RECEIVED_EXTENSION = "eventflowreceived"
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")

ExtensionValue = str | int | bool


def new_event_id() -> str:
    """A fresh id for an event whose sender gave none."""
    return str(uuid.uuid4())


def parse_time(value: str) -> datetime:
    """RFC 3339 timestamp -> aware datetime (a trailing Z is accepted)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as error:
        raise InvalidEventError(f"time: {value!r} is not an RFC 3339 timestamp") from error
    if parsed.tzinfo is None:
        raise InvalidEventError(f"time: {value!r} has no UTC offset; add Z or +HH:MM")
    return parsed


def format_time(value: datetime) -> str:
    """Aware datetime -> RFC 3339 with a Z for UTC."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Data:
    """`Event.data`: its value, or, for an event whose data is text read once already (see
    `deferring_data`), that text read on first use: most events are stored and matched by
    triggers that never look at their data, and a webhook's is a 7 KB document."""

    def __get__(self, event: Event | None, owner: type[Event] | None = None) -> Any:
        if event is None:
            return None  # the field's default, as dataclass asks for it
        value = event.__dict__[_DATA]
        if isinstance(value, _Unread):
            value = jsoncodec.loads(value.text)
            event.__dict__[_DATA] = value
        return value

    def __set__(self, event: Event, value: Any) -> None:
        event.__dict__[_DATA] = value


_DATA = "_data"


@dataclass(frozen=True, slots=True)
class _Unread:
    text: bytes


# Not slotted: `data` is a descriptor, which a slot of the same name would replace.
@dataclass(frozen=True)
class Event:
    """A CloudEvent as its sender made it. `data` is a JSON value, or bytes for binary data."""

    id: str
    source: str
    type: str
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = _Data()
    extensions: Mapping[str, ExtensionValue] = field(default_factory=dict)
    specversion: str = SPEC_VERSION
    # `data` as JSON text when it came as such (see `keeping_data_text`). Not an __init__
    # argument, so `dataclasses.replace` never carries it over to other data.
    data_text: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("id", "source", "type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidEventError(f"{name}: required, a non-empty string")
        if self.specversion != SPEC_VERSION:
            raise InvalidEventError(
                f"specversion: {self.specversion!r} is not supported;"
                f" eventflow speaks {SPEC_VERSION!r}"
            )
        for key in self.extensions:
            if key in CORE_ATTRIBUTES or key == "data" or not _EXTENSION_NAME.match(key):
                raise InvalidEventError(
                    f"extension {key!r}: names are 1-20 lowercase letters or digits"
                    " and cannot reuse a core attribute"
                )

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object (data_base64 for bytes)."""
        return self._with_data(self._attributes())

    def to_json(self, stamps: Mapping[str, str] | None = None) -> bytes:
        """`to_dict` (with `stamps` as further extensions) as UTF-8 JSON, its data last. Data
        kept as text is written as it came: a webhook's 7 KB body is neither walked nor
        encoded again."""
        document = self._attributes()
        document.update(stamps or {})
        if self.data_text is None:
            return jsoncodec.dumps(self._with_data(document))
        # `_attributes` always holds specversion, id, source and type: never "{}".
        return b"".join((jsoncodec.dumps(document)[:-1], b',"data":', self.data_text, b"}"))

    def _with_data(self, document: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.data, bytes):
            document["data_base64"] = base64.b64encode(self.data).decode("ascii")
        elif self.data is not None:
            document["data"] = self.data
        return document

    def _attributes(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.subject is not None:
            document["subject"] = self.subject
        if self.time is not None:
            document["time"] = format_time(self.time)
        if self.datacontenttype is not None:
            document["datacontenttype"] = self.datacontenttype
        if self.dataschema is not None:
            document["dataschema"] = self.dataschema
        document.update(self.extensions)
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Event:
        """Parse a structured-mode CloudEvent; raise InvalidEventError naming the attribute."""
        if not isinstance(document, Mapping):
            raise InvalidEventError("a structured CloudEvent is a JSON object")
        if "data" in document and "data_base64" in document:
            raise InvalidEventError("data and data_base64 are exclusive; send one of them")
        extensions: dict[str, ExtensionValue] = {}
        for key, value in document.items():
            if key in CORE_ATTRIBUTES or key in ("data", "data_base64"):
                continue
            if not isinstance(value, str | int | bool):
                raise InvalidEventError(
                    f"extension {key!r}: value must be a string, integer or boolean"
                )
            extensions[key] = value
        data: Any = document.get("data")
        if "data_base64" in document:
            encoded = document["data_base64"]
            try:
                data = base64.b64decode(encoded, validate=True)
            except (ValueError, TypeError) as error:
                raise InvalidEventError("data_base64: not valid base64") from error
        time_value = document.get("time")
        if time_value is not None and not isinstance(time_value, str):
            raise InvalidEventError("time: must be an RFC 3339 string")
        for name in ("subject", "datacontenttype", "dataschema"):
            if document.get(name) is not None and not isinstance(document[name], str):
                raise InvalidEventError(f"{name}: must be a string")
        return cls(
            specversion=str(document.get("specversion", "")),
            id=document.get("id"),  # type: ignore[arg-type]  # validated in __post_init__
            source=document.get("source"),  # type: ignore[arg-type]
            type=document.get("type"),  # type: ignore[arg-type]
            subject=document.get("subject"),
            time=parse_time(time_value) if time_value is not None else None,
            datacontenttype=document.get("datacontenttype"),
            dataschema=document.get("dataschema"),
            data=data,
            extensions=extensions,
        )

    def expression_view(self) -> dict[str, Any]:
        """The event as CEL and templates see it: attributes, data and extensions by name."""
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject if self.subject is not None else "",
            "time": self.time,
            "datacontenttype": self.datacontenttype or "",
            "data": self.data,
            "extensions": dict(self.extensions),
        }


def keeping_data_text(event: Event, text: bytes) -> Event:
    """`event`, which writes `text` wherever it is written as JSON instead of encoding its data
    again. `text` must be UTF-8 JSON that `jsoncodec.loads` reads as `event.data`, a JSON value
    other than null; nothing may change that value afterwards."""
    object.__setattr__(event, "data_text", text)
    return event


def deferring_data(event: Event, text: bytes) -> Event:
    """`event`, with `text` as its data, read when first asked for and written as it is (see
    `keeping_data_text`). `text` must be UTF-8 JSON that `jsoncodec.loads` reads without error
    as a value other than null: JSON that its writer read already, such as an intake worker's
    event, whose body the worker read to take it."""
    keeping_data_text(event, text)
    event.__dict__[_DATA] = _Unread(text)
    return event


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event stamped by eventflow on arrival: which sensor heard it, and when."""

    event: Event
    sensor: str
    received_at: datetime

    @property
    def id(self) -> str:
        return self.event.id

    def encode(self) -> bytes:
        """Bytes for the bus: a structured CloudEvent carrying the stamp as two extensions."""
        return self.event.to_json(
            {SENSOR_EXTENSION: self.sensor, RECEIVED_EXTENSION: format_time(self.received_at)}
        )

    @classmethod
    def decode(cls, payload: bytes, *, data_read: bool = False) -> ReceivedEvent:
        """The event `encode` wrote. Its data keeps its text when `payload` ends with it (as
        `encode` writes it), so that the store, or the bus of a main process that an intake
        worker handed the event to, writes that text instead of encoding the data again.

        `data_read`: `payload` is what `encode` wrote from an event whose data was read as
        JSON: from an intake worker, not from a bus anyone may publish to. The data's text is
        then read when first asked for (see `deferring_data`), not here."""
        document, data_text = _split_at_data(payload, read_data=not data_read)
        if document is None:
            try:
                document = jsoncodec.loads(payload)
            except ValueError as error:
                raise InvalidEventError(f"bus payload is not JSON: {error}") from error
        if not isinstance(document, dict):
            raise InvalidEventError("bus payload is not a JSON object")
        sensor = document.pop(SENSOR_EXTENSION, None)
        received = document.pop(RECEIVED_EXTENSION, None)
        if not isinstance(sensor, str) or not isinstance(received, str):
            raise InvalidEventError("bus payload lacks eventflow's arrival stamp")
        event = Event.from_dict(document)
        if data_text is not None:
            (deferring_data if data_read else keeping_data_text)(event, data_text)
        return cls(event=event, sensor=sensor, received_at=parse_time(received))


_DATA_MEMBER = b',"data":'


def _split_at_data(
    payload: bytes, *, read_data: bool
) -> tuple[dict[str, Any] | None, bytes | None]:
    """`payload` read as `{...head..., "data": <text>}`: the whole object and the data's text,
    or (None, None) when it is not so written (data elsewhere, or none, or not JSON). Without
    `read_data`, the object is the head alone, and the text is taken as the data's unread.

    In valid JSON `,"data":` outside a string only starts a member named data (a string's
    quotes are escaped), so the first one, at the top level, splits the head from the data;
    if it is elsewhere, one part or the other does not read as JSON.
    """
    at = payload.find(_DATA_MEMBER)
    if at < 0 or not payload.endswith(b"}"):
        return None, None
    data_text = payload[at + len(_DATA_MEMBER) : -1]
    try:
        head = jsoncodec.loads(payload[:at] + b"}")
        data = jsoncodec.loads(data_text) if read_data else None
    except ValueError:
        return None, None
    # An empty head is `{` then `,"data":`, which is not JSON.
    if not isinstance(head, dict) or not head or "data" in head or "data_base64" in head:
        return None, None
    # Null data is no data: no text to keep, read or not.
    if data_text.strip(jsoncodec.JSON_SPACE) == b"null":
        return None, None
    if read_data:
        head["data"] = data
    return head, data_text
