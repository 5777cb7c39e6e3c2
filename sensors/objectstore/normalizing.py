"""Decode object-store notifications into object changes and CloudEvents: the pure core.

One message body (an SQS message, a webhook request, a Kafka or NATS record) is understood in
any of these shapes, told apart by their top-level fields:
- an S3 notification, `{"Records": [...]}`, as AWS S3, MinIO (whose webhook, Kafka and NATS
  targets add `EventName` and `Key` on top, ignored here) and Ceph RGW send it;
- an SNS envelope (`Type` and `Message`) whose `Message` is that S3 document as a string;
- an EventBridge event (`detail-type` "Object Created" or "Object Deleted", with `detail`);
- `s3:TestEvent`, which S3 sends when a notification is configured: it carries no change.

Object keys are decoded per format (see `KeyEncoding`): S3 and SNS send them URL-encoded with
`+` for a space, EventBridge sends them as they are; the caller may override the default.

Bad input raises `DecodeError` naming the field path, the bad value and what is accepted. This
module does no I/O and reads no clock. It does not filter, deduplicate or order changes
(`sequencer_order` is the comparison the sensor uses for that), and it publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, unquote_plus

from eventflow.errors import EventflowError, InvalidEventError
from eventflow.events import JSON_CONTENT_TYPE, Event, parse_time

EVENT_TYPE_PREFIX = "com.amazonaws.s3."
UNKNOWN_REGION = "unknown"
TEST_EVENT = "s3:TestEvent"
ACCEPTED_FORMATS = (
    "an S3 notification ('Records'), an SNS envelope ('Type' and 'Message'),"
    " an EventBridge event ('detail-type' and 'detail') or an s3:TestEvent"
)
# EventBridge names the operation in `reason` (and `deletion-type`); S3 notifications name it
# in `eventName`. These tables give every EventBridge change the name S3 would have sent.
_CREATED_REASONS = {
    "PutObject": "ObjectCreated:Put",
    "POST Object": "ObjectCreated:Post",
    "CopyObject": "ObjectCreated:Copy",
    "CompleteMultipartUpload": "ObjectCreated:CompleteMultipartUpload",
}
_DELETED_REASONS = {"DeleteObject": "ObjectRemoved", "Lifecycle Expiration": "LifecycleExpiration"}
_DELETION_TYPES = {
    "Permanently Deleted": "Delete",
    "Delete Marker Created": "DeleteMarkerCreated",
}
_DETAIL_TYPES = ("Object Created", "Object Deleted")


class KeyEncoding(StrEnum):
    """How a notification writes an object key."""

    URL_PLUS = "url-plus"  # S3, SQS, SNS, MinIO: %XX escapes and '+' for a space
    URL = "url"  # %XX escapes only; a '+' is a '+'
    RAW = "raw"  # EventBridge, Ceph RGW: the key as it is


class DecodeError(EventflowError):
    """A message that carries no valid object-store notification; the message says where."""


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One change of one object, as a notification reported it; `key` is decoded."""

    bucket: str
    key: str
    event_name: str  # as sent: "ObjectCreated:Put" (AWS) or "s3:ObjectCreated:Put" (MinIO)
    size: int | None
    etag: str | None  # without the surrounding quotes some stores add
    version_id: str | None
    sequencer: str | None
    region: str | None
    time: datetime | None
    request_id: str | None
    host_id: str | None
    raw: Mapping[str, Any]  # the record as received (the whole event for EventBridge)


def decode_message(
    body: str | bytes, *, key_encoding: KeyEncoding | None = None
) -> list[ObjectChange]:
    """The object changes one message reports, in order; [] for an s3:TestEvent."""
    document = _parse_json(body, "message body")
    if not isinstance(document, dict):
        raise DecodeError(
            f"message body: a JSON {_json_kind(document)}; expected a JSON object,"
            f" {ACCEPTED_FORMATS}"
        )
    if "Records" in document or document.get("Event") == TEST_EVENT:
        return _s3_document(document, "", key_encoding or KeyEncoding.URL_PLUS)
    if "Type" in document or "TopicArn" in document:
        return _sns_envelope(document, key_encoding or KeyEncoding.URL_PLUS)
    if "detail-type" in document:
        return [_eventbridge(document, key_encoding or KeyEncoding.RAW)]
    found = ", ".join(repr(name) for name in list(document)[:10]) or "none"
    raise DecodeError(
        f"message body: not an object-store notification (top-level fields: {found});"
        f" expected {ACCEPTED_FORMATS}"
    )


def to_event(change: ObjectChange) -> Event:
    """The CloudEvent for one change, after the CloudEvents adapter mapping for AWS S3.

    - type: `com.amazonaws.s3.` + the event name without MinIO's `s3:` prefix;
    - source: `com.amazonaws.s3.<region>.<bucket>` (region `unknown` when the store sends
      none), the same whichever way the notification came, so a trigger need not know it;
    - id: request id, sequencer and a digest of the key; the key is there because one
      DeleteObjects request reports several keys under one request id. A redelivered record
      gives the same id. Without a request id or a sequencer, the id is a digest of the record.
    - subject: the decoded key; time: the event time;
    - data: bucket, key, size, etag, versionId, sequencer, eventName (without `s3:`), region
      and record (the record as received).
    """
    event_name = change.event_name.removeprefix("s3:")
    return Event(
        id=_event_id(change),
        source=f"{EVENT_TYPE_PREFIX}{change.region or UNKNOWN_REGION}.{change.bucket}",
        type=EVENT_TYPE_PREFIX + event_name,
        subject=change.key,
        time=change.time,
        datacontenttype=JSON_CONTENT_TYPE,
        data={
            "bucket": change.bucket,
            "key": change.key,
            "size": change.size,
            "etag": change.etag,
            "versionId": change.version_id,
            "sequencer": change.sequencer,
            "eventName": event_name,
            "region": change.region,
            "record": dict(change.raw),
        },
    )


def sequencer_order(a: str, b: str) -> int:
    """-1, 0 or 1 as S3 sequencer `a` is older than, the same as, or newer than `b`.

    Sequencers are hex strings of varying length; AWS compares them after padding the shorter
    one on the right with zeros. Only the sequencers of one key are comparable.
    """
    padded = [_hex(value).ljust(max(len(a), len(b)), "0") for value in (a, b)]
    return (padded[0] > padded[1]) - (padded[0] < padded[1])


def _hex(value: str) -> str:
    if not value or any(char not in "0123456789abcdefABCDEF" for char in value):
        raise ValueError(
            f"sequencer {value!r} is not a hex string; S3 sequencers look like '0055AED6DCD90281E5'"
        )
    return value.upper()


def _event_id(change: ObjectChange) -> str:
    if change.request_id and change.sequencer:
        return f"{change.request_id}.{change.sequencer}.{_digest(change.key)[:16]}"
    record = json.dumps(change.raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _digest(record)[:32]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the three formats -------------------------------------------------------------------


def _s3_document(
    document: Mapping[str, Any], where: str, encoding: KeyEncoding
) -> list[ObjectChange]:
    if document.get("Event") == TEST_EVENT:
        return []
    records = document["Records"]
    if not isinstance(records, list):
        raise DecodeError(f"{where}Records: a JSON {_json_kind(records)}; expected an array")
    return [
        _s3_record(record, f"{where}Records[{index}]", encoding)
        for index, record in enumerate(records)
    ]


def _s3_record(record: Any, path: str, encoding: KeyEncoding) -> ObjectChange:
    record = _object(record, path)
    s3 = _field_object(record, "s3", path)
    bucket = _field_object(s3, "bucket", f"{path}.s3")
    item = _field_object(s3, "object", f"{path}.s3")
    item_path = f"{path}.s3.object"
    response = record.get("responseElements")
    response = _object(response, f"{path}.responseElements") if response is not None else {}
    return ObjectChange(
        bucket=_text(bucket, "name", f"{path}.s3.bucket"),
        key=_key(_text(item, "key", item_path), f"{item_path}.key", encoding),
        event_name=_text(record, "eventName", path),
        size=_size(item, item_path),
        etag=_etag(_optional_text(item, "eTag", item_path)),
        version_id=_optional_text(item, "versionId", item_path),
        sequencer=_optional_text(item, "sequencer", item_path),
        region=_optional_text(record, "awsRegion", path),
        time=_time(record, "eventTime", path),
        request_id=_optional_text(response, "x-amz-request-id", f"{path}.responseElements"),
        host_id=_optional_text(response, "x-amz-id-2", f"{path}.responseElements"),
        raw=record,
    )


def _sns_envelope(document: Mapping[str, Any], encoding: KeyEncoding) -> list[ObjectChange]:
    kind = document.get("Type")
    if kind != "Notification":
        raise DecodeError(
            f"Type: {kind!r} is not an SNS notification; only Type 'Notification' carries"
            " an S3 document (a SubscriptionConfirmation is answered by the push listener)"
        )
    message = document.get("Message")
    if not isinstance(message, str):
        shown = "missing" if message is None else f"a JSON {_json_kind(message)}"
        raise DecodeError(f"Message: {shown}; expected the S3 notification as a JSON string")
    inner = _parse_json(message, "Message")
    if not isinstance(inner, dict):
        raise DecodeError(
            f"Message: a JSON {_json_kind(inner)}; expected an S3 notification object"
        )
    if "Records" not in inner and inner.get("Event") != TEST_EVENT:
        raise DecodeError(
            "Message: no 'Records'; expected an S3 notification {\"Records\": [...]}"
            " or an s3:TestEvent"
        )
    return _s3_document(inner, "Message.", encoding)


def _eventbridge(document: Mapping[str, Any], encoding: KeyEncoding) -> ObjectChange:
    detail_type = document["detail-type"]
    if detail_type not in _DETAIL_TYPES:
        raise DecodeError(
            f"detail-type: {detail_type!r} is not an object change; expected"
            f" {' or '.join(map(repr, _DETAIL_TYPES))}"
        )
    detail = _field_object(document, "detail", "")
    bucket = _field_object(detail, "bucket", "detail")
    item = _field_object(detail, "object", "detail")
    return ObjectChange(
        bucket=_text(bucket, "name", "detail.bucket"),
        key=_key(_text(item, "key", "detail.object"), "detail.object.key", encoding),
        event_name=_eventbridge_name(detail_type, detail),
        size=_size(item, "detail.object"),
        etag=_etag(_optional_text(item, "etag", "detail.object")),
        version_id=_optional_text(item, "version-id", "detail.object"),
        sequencer=_optional_text(item, "sequencer", "detail.object"),
        region=_optional_text(document, "region", ""),
        time=_time(document, "time", ""),
        request_id=_optional_text(detail, "request-id", "detail"),
        host_id=None,
        raw=document,
    )


def _eventbridge_name(detail_type: str, detail: Mapping[str, Any]) -> str:
    reason = _text(detail, "reason", "detail")
    if detail_type == "Object Created":
        return _lookup(_CREATED_REASONS, reason, "detail.reason")
    prefix = _lookup(_DELETED_REASONS, reason, "detail.reason")
    deletion = _text(detail, "deletion-type", "detail")
    return f"{prefix}:{_lookup(_DELETION_TYPES, deletion, 'detail.deletion-type')}"


def _lookup(table: Mapping[str, str], value: str, path: str) -> str:
    if value not in table:
        raise DecodeError(
            f"{path}: {value!r} is not known; expected one of {', '.join(map(repr, table))}"
        )
    return table[value]


# --- fields ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; the bus and the store downstream would not.
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(body: str | bytes, where: str) -> Any:
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError as error:
            raise DecodeError(
                f"{where}: not UTF-8 text ({error.reason} at byte {error.start})"
            ) from error
    if not body.strip():
        raise DecodeError(f"{where}: empty; expected {ACCEPTED_FORMATS} as JSON")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise DecodeError(
            f"{where}: not JSON ({error.msg} at {error.lineno}:{error.colno})"
        ) from error
    except ValueError as error:
        raise DecodeError(f"{where}: not JSON ({error})") from error
    except RecursionError as error:
        raise DecodeError(f"{where}: not JSON (nested too deeply)") from error


def _json_kind(value: Any) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (bool, "boolean"),
        ((int, float), "number"),
    ]
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{path}: a JSON {_json_kind(value)}; expected an object")
    return value


def _field_object(container: Mapping[str, Any], name: str, path: str) -> Mapping[str, Any]:
    if container.get(name) is None:
        raise DecodeError(f"{_join(path, name)}: missing; expected an object")
    return _object(container[name], _join(path, name))


def _optional_text(container: Mapping[str, Any], name: str, path: str) -> str | None:
    value = container.get(name)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"{_join(path, name)}: a JSON {_json_kind(value)}; expected a string")
    # MinIO sends "" for what it does not know (region, version id).
    return value or None


def _text(container: Mapping[str, Any], name: str, path: str) -> str:
    value = _optional_text(container, name, path)
    if value is None:
        raise DecodeError(f"{_join(path, name)}: missing or empty; expected a non-empty string")
    return value


def _key(sent: str, path: str, encoding: KeyEncoding) -> str:
    if encoding is KeyEncoding.RAW:
        return sent
    decode = unquote_plus if encoding is KeyEncoding.URL_PLUS else unquote
    try:
        return decode(sent, errors="strict")
    except UnicodeDecodeError as error:
        raise DecodeError(
            f"{path}: {sent!r} percent-decodes to bytes that are not UTF-8; if the store sends"
            f" keys unencoded, set the key encoding to {KeyEncoding.RAW.value!r}"
        ) from error


def _size(item: Mapping[str, Any], path: str) -> int | None:
    size = item.get("size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DecodeError(f"{path}.size: {size!r}; expected a whole number of bytes, 0 or more")
    return size


def _etag(value: str | None) -> str | None:
    # Listings quote ETags and notifications do not; one form lets a dedupe key match both.
    if value is None:
        return None
    return value.strip('"') or None


def _time(container: Mapping[str, Any], name: str, path: str) -> datetime | None:
    value = _optional_text(container, name, path)
    if value is None:
        return None
    try:
        return parse_time(value)
    except InvalidEventError as error:
        raise DecodeError(
            f"{_join(path, name)}: {value!r} is not an RFC 3339 timestamp"
            " such as '2024-05-01T12:00:00.000Z'"
        ) from error
