"""Turn one webhook request into CloudEvents: the pure core of the webhook sensor.

Four shapes of request are understood, told apart by their headers:
- a CloudEvent in structured mode (`application/cloudevents+json`) or a batch of them
  (`application/cloudevents-batch+json`);
- a CloudEvent in binary mode (a `ce-specversion` header; attributes in `ce-*` headers, the
  body is the data);
- a plain JSON request (`application/json` or another `+json` type), which the sensor's
  `event.*` templates turn into a CloudEvent whose data is the parsed body;
- a form (`application/x-www-form-urlencoded`: Slack slash commands, GitHub's form mode),
  whose data is an object of its fields, or the JSON of its only field when that is `payload`.

Each event comes with its delivery key, what redeliveries of it share (`Delivery.key`): a
CloudEvent's source and id, or the delivery id the config or the preset names; a plain event
with a delivery id and no `event.id` template takes the delivery id as its id. Allow-listed
headers become extensions (`headers.py`).

Anything else raises `RequestError` carrying the HTTP status and a message for the sender.
This module does no I/O and reads no clock: `now` and the id factory are arguments. It does not
check methods, body sizes or signatures, and it does not publish anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from eventflow.errors import ExpressionError, InvalidEventError
from eventflow.events import JSON_CONTENT_TYPE, Event, keeping_data_text, new_event_id
from eventflow.jsoncodec import may_hold_big_integer
from eventflow.sensing.binding import binary_event
from eventflow.sensing.protocol import HttpRequest
from eventflow.sensing.templating import Defaults, render_attributes
from sensors.webhook.config import WebhookConfig
from sensors.webhook.headers import header_extensions

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
ACCEPTED_CONTENT_TYPES = (
    "application/json (or another +json type), application/x-www-form-urlencoded,"
    " application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode"
    " CloudEvent (a ce-specversion header and ce-* attribute headers)"
)
# A form field count no provider comes near; parse_qsl stops there instead of growing a dict.
MAX_FORM_FIELDS = 1000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event of a request and its delivery key (None: the request names no identity)."""

    event: Event
    key: str | None


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


# Deliveries to an endpoint come with one or two Content-Types, each parsed twice a request.
@functools.lru_cache(maxsize=64)
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


def is_batch(content_type: str | None) -> bool:
    """Whether a request of this Content-Type is a CloudEvents batch (answered with all ids,
    not one)."""
    media = parse_media_type(content_type)
    return media is not None and media.essence == BATCH_CONTENT_TYPE


def normalize(
    request: HttpRequest,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str] = new_event_id,
) -> list[Event]:
    """The events a request carries, in order; raise RequestError when it carries none."""
    return [delivery.event for delivery in deliveries(request, config, now, new_id)]


def deliveries(
    request: HttpRequest,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str] = new_event_id,
    *,
    kept: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[Delivery]:
    """The events a request carries with their delivery keys; RequestError when it has none.

    `kept` is `config.kept_headers` and `headers` the request's with lower-case names (and
    the credentials dropped), passed in by a caller that has them already.
    """
    headers = _lower_names(request.headers) if headers is None else headers
    extensions = header_extensions(headers, config.kept_headers if kept is None else kept)
    found = _deliveries(request, headers, extensions, config=config, now=now, new_id=new_id)
    if not config.dedupe.enabled:
        return [Delivery(delivery.event, None) for delivery in found]
    return found


def _with_extensions(event: Event, extensions: Mapping[str, str]) -> Event:
    # What the sender put in the event itself wins over a header of the same name.
    if not extensions:
        return event
    return dataclasses.replace(event, extensions={**extensions, **event.extensions})


def cloudevent_key(event: Event) -> str:
    """A CloudEvent's identity: its source and id together (the spec's uniqueness rule)."""
    return json.dumps([event.source, event.id], separators=(",", ":"), ensure_ascii=False)


def _cloudevents(events: list[Event], extensions: Mapping[str, str]) -> list[Delivery]:
    return [
        Delivery(_with_extensions(event, extensions), cloudevent_key(event)) for event in events
    ]


def _deliveries(
    request: HttpRequest,
    headers: Mapping[str, str],
    extensions: Mapping[str, str],
    *,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str],
) -> list[Delivery]:
    media = parse_media_type(headers.get("content-type"))
    body: Any
    try:
        if media is not None and media.essence == STRUCTURED_CONTENT_TYPE:
            event = Event.from_dict(_parse_json(request.body, media))
            return _cloudevents([event], extensions)
        if media is not None and media.essence == BATCH_CONTENT_TYPE:
            return _cloudevents(_batch(request.body, media), extensions)
        if "ce-specversion" in headers:
            return _cloudevents([_binary(headers, request.body, media)], extensions)
        if media is not None and (media.is_json or media.essence == FORM_CONTENT_TYPE):
            body_text: bytes | None = None
            if media.is_json:
                body, body_text = _parse_json_keeping_text(request.body, media)
            else:
                body = _parse_form(request.body, media)
            delivery = _plain(
                request, headers, body, extensions, config=config, now=now, new_id=new_id
            )
            if body_text is not None and body is not None:
                keeping_data_text(delivery.event, body_text)
            return [delivery]
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


# One decoder for every request: json.loads with options builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(body: bytes, media: MediaType) -> Any:
    """The JSON value of `body`, as Python's json reads it; RequestError saying why not.

    orjson reads the common case, UTF-8 text, at a third of the cost. Where it refuses a body
    (invalid JSON, but also NaN, Infinity, 1e400, a lone surrogate escape, deep nesting) or
    might read one differently (a huge integer), Python's json has the last word, so what is
    accepted, what it becomes and the message of a refusal stay json's.
    """
    return _parse_json_keeping_text(body, media)[0]


def _parse_json_keeping_text(body: bytes, media: MediaType) -> tuple[Any, bytes | None]:
    """`_parse_json`, and `body` itself where it is text that `jsoncodec.loads` reads back as
    the same value (what orjson read), else None."""
    if not body:
        raise RequestError(
            400, f"body is empty; a request of type {media.essence} must carry a JSON value"
        )
    if media.charset in (None, "utf-8") and not may_hold_big_integer(body):
        try:
            return orjson.loads(body), body
        except orjson.JSONDecodeError:
            pass  # json decides, and words the refusal
    return _parse_json_text(body, media), None


def _parse_json_text(body: bytes, media: MediaType) -> Any:
    text = _decode_text(body, media)
    try:
        return _JSON.decode(text)
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


def _parse_form(body: bytes, media: MediaType) -> Any:
    """A form's fields as an object (a repeated field as a list of its values), or the JSON
    of its only field when that is `payload`, as GitHub's form mode and Slack's interactive
    messages send it."""
    text = _decode_text(body, media)
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding=media.charset or "utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError as error:
        raise RequestError(
            400, f"form field percent-decodes to bytes that are not UTF-8 at byte {error.start}"
        ) from error
    except ValueError as error:
        raise RequestError(400, f"body is not a valid form: {error}") from error
    if len(pairs) == 1 and pairs[0][0] == "payload":
        json_media = MediaType(JSON_CONTENT_TYPE, JSON_CONTENT_TYPE, None)
        try:
            return _parse_json(pairs[0][1].encode("utf-8", "surrogatepass"), json_media)
        except RequestError as error:
            raise RequestError(400, f"form field payload: {error.message}") from error
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name not in fields:
            fields[name] = value
        elif isinstance(fields[name], list):
            fields[name].append(value)
        else:
            fields[name] = [fields[name], value]
    return fields


def default_delivery_id(preset: str | None, headers: Mapping[str, str], body: Any) -> str | None:
    """The delivery id a provider sends, for the presets that name one; None otherwise."""
    if preset == "github":
        return headers.get("x-github-delivery") or None
    if preset == "gitlab":
        return headers.get("x-gitlab-event-uuid") or None
    if preset == "stripe" and isinstance(body, dict) and isinstance(body.get("id"), str):
        return body["id"] or None
    return None


def _delivery_id(config: WebhookConfig, context: Mapping[str, Any]) -> str | None:
    template = config.dedupe.deliveryId
    if template is None:
        return default_delivery_id(config.preset, context["headers"], context["body"])
    try:
        return template.render(context) or None
    except ExpressionError as error:
        raise RequestError(
            400,
            f"dedupe.deliveryId: the template {template.source!r} failed on this request: {error}",
        ) from error


def _constant(value: str) -> Callable[[], str]:
    return lambda: value


def _plain(
    request: HttpRequest,
    headers: Mapping[str, str],
    body: Any,
    extensions: Mapping[str, str],
    *,
    config: WebhookConfig,
    now: datetime,
    new_id: Callable[[], str],
) -> Delivery:
    context = {
        "headers": headers,
        "query": dict(request.query),
        "body": body,
        "path": request.path,
        "method": request.method.upper(),
    }
    delivery_id = _delivery_id(config, context)
    # A redelivery keeps its event id, so the engine's run dedupe absorbs a second emit.
    default_id = new_id if delivery_id is None else _constant(delivery_id)
    attributes = render_attributes(
        config.event,
        context,
        Defaults(source=f"/webhooks/{config.path}", subject=None, id=default_id),
        what="request",
        failure=lambda reason: RequestError(400, reason),
    )
    event = Event(
        type=attributes.type,
        source=attributes.source,
        subject=attributes.subject,
        id=attributes.id,
        time=now,
        datacontenttype=JSON_CONTENT_TYPE,
        data=body,
        extensions=dict(extensions),
    )
    return Delivery(event, delivery_id)
