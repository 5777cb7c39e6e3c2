"""Turn one webhook request into CloudEvents: the pure core of the webhook sensor.

Three shapes of request are understood, told apart by their headers:
- a CloudEvent in structured mode (`application/cloudevents+json`) or a batch of them
  (`application/cloudevents-batch+json`);
- a CloudEvent in binary mode (a `ce-specversion` header; attributes in `ce-*` headers, the
  body is the data);
- a plain JSON request (`application/json` or another `+json` type), which the sensor's
  `event.*` templates turn into a CloudEvent whose data is the parsed body.

Anything else raises `RequestError` carrying the HTTP status and a message for the sender.
This module does no I/O and reads no clock: `now` and the id factory are arguments. It does not
check methods, body sizes or signatures, and it does not publish anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from eventflow.errors import InvalidEventError
from eventflow.events import JSON_CONTENT_TYPE, Event, new_event_id
from eventflow.sensing.binding import binary_event
from eventflow.sensing.protocol import HttpRequest
from eventflow.sensing.templating import Defaults, render_attributes
from sensors.webhook.config import WebhookConfig

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
ACCEPTED_CONTENT_TYPES = (
    "application/json (or another +json type), application/cloudevents+json,"
    " application/cloudevents-batch+json, or a binary-mode CloudEvent"
    " (a ce-specversion header and ce-* attribute headers)"
)


class RequestError(Exception):
    """A request that cannot become events; the sensor answers `status` with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed Content-Type: `essence` is `type/subtype` in lower case."""

    value: str
    essence: str
    charset: str | None

    @property
    def is_json(self) -> bool:
        """JSON data: application/json or a `+json` type that is not a CloudEvents envelope."""
        if self.essence in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE):
            return False
        return self.essence == JSON_CONTENT_TYPE or (
            self.essence.startswith("application/") and self.essence.endswith("+json")
        )


def parse_media_type(value: str | None) -> MediaType | None:
    """`application/json; charset=utf-8` -> MediaType; None when the header is absent or blank."""
    if value is None or not value.strip():
        return None
    essence, *parameters = value.split(";")
    charset = None
    for parameter in parameters:
        name, _, raw = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = raw.strip().strip('"').lower() or None
    return MediaType(value.strip(), essence.strip().lower(), charset)


def _lower_names(headers: Mapping[str, str]) -> dict[str, str]:
    # The listener lower-cases names already; callers such as tests and the test kit may not.
    return {name.lower(): value for name, value in headers.items()}


def is_batch(request: HttpRequest) -> bool:
    """Whether the request is a CloudEvents batch (answered with all ids, not one)."""
    media = parse_media_type(_lower_names(request.headers).get("content-type"))
    return media is not None and media.essence == BATCH_CONTENT_TYPE


def normalize(
    request: HttpRequest,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str] = new_event_id,
) -> list[Event]:
    """The events a request carries, in order; raise RequestError when it carries none."""
    headers = _lower_names(request.headers)
    media = parse_media_type(headers.get("content-type"))
    try:
        if media is not None and media.essence == STRUCTURED_CONTENT_TYPE:
            return [Event.from_dict(_parse_json(request.body, media))]
        if media is not None and media.essence == BATCH_CONTENT_TYPE:
            return _batch(request.body, media)
        if "ce-specversion" in headers:
            return [_binary(headers, request.body, media)]
        if media is not None and media.is_json:
            return [_plain(request, headers, media, config=config, now=now, new_id=new_id)]
    except InvalidEventError as error:
        raise RequestError(400, str(error)) from error
    if media is None:
        raise RequestError(415, f"the request has no content-type; send {ACCEPTED_CONTENT_TYPES}")
    raise RequestError(
        415, f"content-type {media.essence!r} is not accepted; send {ACCEPTED_CONTENT_TYPES}"
    )


def _decode_text(body: bytes, media: MediaType) -> str:
    charset = media.charset or "utf-8"
    try:
        return body.decode(charset)
    except LookupError as error:
        raise RequestError(
            415, f"charset {charset!r} is not supported; send the body as charset=utf-8"
        ) from error
    except UnicodeDecodeError as error:
        raise RequestError(
            400, f"body is not valid {charset} text: {error.reason} at byte {error.start}"
        ) from error


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which no other JSON reader downstream would.
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(body: bytes, media: MediaType) -> Any:
    if not body:
        raise RequestError(
            400, f"body is empty; a request of type {media.essence} must carry a JSON value"
        )
    text = _decode_text(body, media)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise RequestError(
            400, f"body is not valid JSON: {error.msg} at {error.lineno}:{error.colno}"
        ) from error
    except ValueError as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise RequestError(400, "body is not valid JSON: it is nested too deeply") from error


def _json_kind(value: Any) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (bool, "boolean"),
        ((int, float), "number"),
    ]
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


def _batch(body: bytes, media: MediaType) -> list[Event]:
    documents = _parse_json(body, media)
    if not isinstance(documents, list):
        raise RequestError(
            400,
            f"a CloudEvents batch is a JSON array of structured events;"
            f" the body is a JSON {_json_kind(documents)}",
        )
    events = []
    for index, document in enumerate(documents):
        try:
            events.append(Event.from_dict(document))
        except InvalidEventError as error:
            raise RequestError(400, f"event [{index}]: {error}") from error
    return events


def _header_value(name: str, raw: str) -> str:
    # The HTTP binding percent-encodes what a header cannot carry (space, ", %, non-ASCII).
    try:
        return unquote(raw.strip(), errors="strict")
    except UnicodeDecodeError as error:
        raise RequestError(
            400, f"header {name}: {raw!r} percent-decodes to bytes that are not UTF-8"
        ) from error


def _binary(headers: Mapping[str, str], body: bytes, media: MediaType | None) -> Event:
    attributes = [
        (name.removeprefix("ce-"), _header_value(name, raw))
        for name, raw in headers.items()
        if name.startswith("ce-")
    ]
    return binary_event(
        attributes,
        content_type=media.value if media is not None else None,
        data=_binary_data(body, media),
    )


def _binary_data(body: bytes, media: MediaType | None) -> Any:
    if media is not None and media.is_json:
        return _parse_json(body, media)
    if not body:
        return None
    if media is not None and media.essence.startswith("text/"):
        return _decode_text(body, media)
    return body


def _plain(
    request: HttpRequest,
    headers: Mapping[str, str],
    media: MediaType,
    *,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str],
) -> Event:
    body = _parse_json(request.body, media)
    context = {
        "headers": headers,
        "query": dict(request.query),
        "body": body,
        "path": request.path,
        "method": request.method.upper(),
    }
    attributes = render_attributes(
        config.event,
        context,
        Defaults(source=f"/webhooks/{config.path}", subject=None, id=new_id),
        what="request",
        failure=lambda reason: RequestError(400, reason),
    )
    return Event(
        type=attributes.type,
        source=attributes.source,
        subject=attributes.subject,
        id=attributes.id,
        time=now,
        datacontenttype=JSON_CONTENT_TYPE,
        data=body,
    )
