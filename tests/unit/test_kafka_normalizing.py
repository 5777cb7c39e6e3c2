"""The Kafka sensor's pure core: config validation, record -> CloudEvent, poison events, backoff."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from eventflow.events import Event
from sensors.kafka.config import KafkaConfig
from sensors.kafka.normalizing import (
    KafkaRecord,
    PoisonRecord,
    normalize,
    poison_event,
    template_context,
)
from sensors.kafka.sensor import Backoff

STAMP = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
BASE: dict[str, Any] = {"bootstrapServers": ["127.0.0.1:9092"], "topics": ["orders"]}
DEFAULT = KafkaConfig.model_validate(BASE)
CE_HEADERS = (
    ("ce_specversion", b"1.0"),
    ("ce_id", b"b-1"),
    ("ce_source", b"/shop"),
    ("ce_type", b"com.example.ordered"),
)


def config(**spec: Any) -> KafkaConfig:
    return KafkaConfig.model_validate({**BASE, **spec})


def record(
    value: bytes | None = b'{"total": 3}',
    *,
    key: bytes | None = b"order-1",
    headers: tuple[tuple[str, bytes], ...] = (),
    offset: int = 7,
) -> KafkaRecord:
    return KafkaRecord("orders", 2, offset, value, key, headers, STAMP)


def poison_reason(rec: KafkaRecord, cfg: KafkaConfig = DEFAULT) -> str:
    with pytest.raises(PoisonRecord) as caught:
        normalize(rec, cfg)
    return caught.value.reason


def config_error(**spec: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        config(**spec)
    [error] = caught.value.errors()
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


# --- plain records ------------------------------------------------------------------------


def test_plain_json_record_gets_the_default_attributes() -> None:
    """type, source, subject (key), id (position), time (timestamp) and JSON data by default."""
    assert normalize(record(), DEFAULT) == Event(
        id="orders/2/7",
        source="kafka://orders",
        type="eventflow.kafka.record",
        subject="order-1",
        time=STAMP,
        datacontenttype="application/json",
        data={"total": 3},
    )


def test_record_without_key_or_timestamp_has_no_subject_or_time() -> None:
    """An absent or empty key gives no subject; a record without timestamp no time."""
    for key in (None, b""):
        rec = KafkaRecord("orders", 0, 1, b"1", key)
        event = normalize(rec, DEFAULT)
        assert (event.subject, event.time, event.data) == (None, None, 1)


def test_key_that_is_not_utf8_becomes_a_base64_subject() -> None:
    """A binary key survives as base64 text rather than being mangled."""
    assert normalize(record(key=b"\xff\x00"), DEFAULT).subject == "/wA="


def test_tombstone_has_no_data_whatever_the_value_format() -> None:
    """A null value (a deleted key) is an event without data and without content type."""
    for value_format in ("json", "text", "base64"):
        event = normalize(record(None), config(valueFormat=value_format))
        assert (event.data, event.datacontenttype) == (None, None)


def test_text_and_base64_value_formats_shape_the_data() -> None:
    """text gives a string, base64 gives bytes (data_base64 on the bus)."""
    text = normalize(record(b"h\xc3\xa9llo"), config(valueFormat="text"))
    assert (text.data, text.datacontenttype) == ("héllo", "text/plain; charset=utf-8")
    raw = normalize(record(b"\x00\x01"), config(valueFormat="base64"))
    assert (raw.data, raw.datacontenttype) == (b"\x00\x01", "application/octet-stream")
    assert raw.to_dict()["data_base64"] == "AAE="


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            b"{bad",
            "value is not valid JSON: Expecting property name enclosed in double quotes at 1:2",
        ),
        (b"", "value is empty; a JSON value was expected"),
        (b"  ", "value is empty; a JSON value was expected"),
        (b"NaN", "value is not valid JSON: NaN is not a JSON number"),
        (b"\xff", "value is not valid UTF-8 text: invalid start byte at byte 0"),
        (b"[" * 100_000 + b"]" * 100_000, "value is not valid JSON: it is nested too deeply"),
    ],
)
def test_value_that_is_not_json_is_poison_when_json_is_expected(value: bytes, reason: str) -> None:
    """valueFormat json: every way a value can fail to be JSON is named in the reason."""
    assert poison_reason(record(value)) == reason


def test_value_that_is_not_utf8_is_poison_when_text_is_expected() -> None:
    """valueFormat text: invalid UTF-8 is a poison record, not replaced characters."""
    reason = poison_reason(record(b"ok\xc3"), config(valueFormat="text"))
    assert reason == "value is not valid UTF-8 text: unexpected end of data at byte 2"


def test_value_over_max_record_bytes_is_poison_before_any_parsing() -> None:
    """maxRecordBytes applies to every shape; exactly the limit is accepted."""
    assert normalize(record(b"12345"), config(maxRecordBytes=5)).data == 12345
    reason = poison_reason(record(b"123456", headers=CE_HEADERS), config(maxRecordBytes=5))
    assert reason == "value is 6 bytes, more than maxRecordBytes (5)"


# --- templates ----------------------------------------------------------------------------


def test_templates_render_from_record_fields() -> None:
    """type/source/subject/id templates see topic, partition, offset, key, headers and value."""
    cfg = config(
        event={
            "type": "com.example.{{ record.value.kind }}",
            "source": "kafka://{{ record.topic }}/{{ record.partition }}",
            "subject": "{{ record.headers['tenant'] }}",
            "id": "{{ record.key }}-{{ record.offset }}",
        }
    )
    rec = record(b'{"kind": "paid"}', headers=(("Tenant", b"acme"),))
    event = normalize(rec, cfg)
    assert (event.type, event.source, event.subject, event.id) == (
        "com.example.paid",
        "kafka://orders/2",
        "acme",
        "order-1-7",
    )


def test_template_context_shows_the_record_as_templates_see_it() -> None:
    """Headers are lower-cased text (last one wins), bytes values are base64 text."""
    rec = record(b"\x00", headers=(("A", b"1"), ("a", b"2"), ("bin", b"\xff")))
    assert template_context(rec, b"\x00") == {
        "record": {
            "topic": "orders",
            "partition": 2,
            "offset": 7,
            "key": "order-1",
            "headers": {"a": "2", "bin": "\ufffd"},
            "value": "AA==",
            "timestamp": STAMP,
        }
    }


def test_subject_template_that_renders_empty_gives_no_subject() -> None:
    """An empty subject is no subject, as with the webhook sensor."""
    cfg = config(event={"subject": "{{ record.value.s }}"})
    assert normalize(record(b'{"s": ""}'), cfg).subject is None
    assert normalize(record(b'{"s": "x"}'), cfg).subject == "x"


def test_template_failing_on_a_record_is_poison_naming_the_attribute() -> None:
    """A template that cannot be evaluated on this record makes it a poison record."""
    reason = poison_reason(record(b"{}"), config(event={"type": "t.{{ record.value.kind }}"}))
    assert reason == (
        "event.type: the template 't.{{ record.value.kind }}' failed on this record:"
        " 'record.value.kind': no such key: kind"
    )


def test_required_template_rendering_empty_is_poison() -> None:
    """type, source and id cannot be empty strings."""
    for attribute in ("type", "source", "id"):
        reason = poison_reason(
            record(b'{"v": ""}'), config(event={attribute: "{{ record.value.v }}"})
        )
        assert reason == (
            f"event.{attribute}: the template '{{{{ record.value.v }}}}' gave an empty string"
            f" for this record; a CloudEvent needs a non-empty {attribute}"
        )


# --- CloudEvents binding ------------------------------------------------------------------


def test_binary_mode_reads_attributes_from_ce_headers() -> None:
    """ce_* headers are the attributes (others are extensions); content-type types the data."""
    headers = (
        *CE_HEADERS,
        ("ce_subject", b"o-1"),
        ("ce_time", b"2024-05-01T12:00:00Z"),
        ("ce_dataschema", b"https://example.com/s"),
        ("ce_traceparent", b"00-ab-cd-01"),
        ("content-type", b"application/vnd.shop+json"),
        ("other", b"ignored"),
    )
    assert normalize(record(b'{"a": 1}', headers=headers), DEFAULT) == Event(
        id="b-1",
        source="/shop",
        type="com.example.ordered",
        subject="o-1",
        time=datetime(2024, 5, 1, 12, tzinfo=UTC),
        dataschema="https://example.com/s",
        datacontenttype="application/vnd.shop+json",
        data={"a": 1},
        extensions={"traceparent": "00-ab-cd-01"},
    )


@pytest.mark.parametrize(
    ("content_type", "value", "data"),
    [
        (b"text/plain; charset=utf-8", b"hi", "hi"),
        (b"application/octet-stream", b"\x00", b"\x00"),
        (b"application/json", b"", None),
    ],
)
def test_binary_mode_data_follows_the_content_type(
    content_type: bytes, value: bytes, data: Any
) -> None:
    """JSON types are parsed, text/* decoded, other types kept as bytes, empty is no data."""
    rec = record(value, headers=(*CE_HEADERS, ("content-type", content_type)))
    event = normalize(rec, DEFAULT)
    assert (event.data, event.datacontenttype) == (data, content_type.decode())


def test_binary_mode_without_content_type_uses_the_value_format() -> None:
    """No content-type header: valueFormat decides, as for a plain record."""
    event = normalize(record(b"hi", headers=CE_HEADERS), config(valueFormat="text"))
    assert (event.data, event.datacontenttype) == ("hi", "text/plain; charset=utf-8")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (CE_HEADERS[:1], "invalid CloudEvent: id: required, a non-empty string"),
        (
            (("ce_specversion", b"0.3"), *CE_HEADERS[1:]),
            "invalid CloudEvent: specversion: '0.3' is not supported; eventflow speaks '1.0'",
        ),
        (
            (*CE_HEADERS, ("ce_time", b"yesterday")),
            "invalid CloudEvent: time: 'yesterday' is not an RFC 3339 timestamp",
        ),
        (
            (*CE_HEADERS, ("ce_Bad_Name", b"x")),
            "invalid CloudEvent: extension 'bad_name': names are 1-20 lowercase letters or"
            " digits and cannot reuse a core attribute",
        ),
        (
            (*CE_HEADERS, ("ce_subject", b"\xff")),
            "header ce_subject is not valid UTF-8 text: invalid start byte at byte 0",
        ),
        (
            (*CE_HEADERS, ("content-type", b"application/json")),
            "value is not valid JSON: Expecting property name enclosed in double quotes at 1:2",
        ),
    ],
)
def test_invalid_binary_mode_record_is_poison(
    headers: tuple[tuple[str, bytes], ...], reason: str
) -> None:
    """A binary-mode record breaking CloudEvents 1.0 is poison with the attribute named."""
    assert poison_reason(record(b"{bad" if "value" in reason else b"1", headers=headers)) == reason


def test_structured_mode_value_is_the_cloudevent() -> None:
    """content-type application/cloudevents+json: the value is parsed as a CloudEvent."""
    document = {"specversion": "1.0", "id": "s", "source": "/s", "type": "t", "data": [1]}
    headers = (("Content-Type", b"application/cloudevents+json; charset=UTF-8"),)
    rec = record(json.dumps(document).encode(), headers=headers)
    assert normalize(rec, DEFAULT) == Event.from_dict(document)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", "invalid CloudEvent: a structured CloudEvent is a JSON object"),
        (b'{"specversion": "1.0"}', "invalid CloudEvent: id: required, a non-empty string"),
        (b"{", "value is not valid JSON: Expecting property name enclosed in double quotes at 1:2"),
        (None, "value is empty; a JSON value was expected"),
    ],
)
def test_invalid_structured_record_is_poison(value: bytes | None, reason: str) -> None:
    """A structured record that is no valid CloudEvent object is poison, whatever valueFormat."""
    headers = (("content-type", b"application/cloudevents+json"),)
    assert poison_reason(record(value, headers=headers), config(valueFormat="text")) == reason


# --- poison events ------------------------------------------------------------------------


def test_poison_event_carries_the_reason_and_the_raw_record() -> None:
    """eventflow.kafka.poison, id = position (stable on redelivery), raw key and value base64."""
    assert poison_event(record(b"\xff"), "why") == Event(
        id="orders/2/7",
        source="kafka://orders",
        type="eventflow.kafka.poison",
        subject="order-1",
        time=STAMP,
        datacontenttype="application/json",
        data={
            "reason": "why",
            "topic": "orders",
            "partition": 2,
            "offset": 7,
            "key_base64": base64.b64encode(b"order-1").decode(),
            "value_base64": "/w==",
        },
    )
    empty = poison_event(KafkaRecord("orders", 0, 0, None), "tombstone")
    assert (empty.subject, empty.data["key_base64"], empty.data["value_base64"]) == (
        None,
        None,
        None,
    )


# --- config -------------------------------------------------------------------------------


def test_config_defaults() -> None:
    """Defaults: latest, json, 1 MiB, plaintext, group eventflow-<sensor>, no dead letters."""
    assert (
        DEFAULT.startFrom,
        DEFAULT.valueFormat,
        DEFAULT.maxRecordBytes,
        DEFAULT.security.protocol,
        DEFAULT.group_id("orders"),
        DEFAULT.deadLetterTopic,
    ) == ("latest", "json", 1_048_576, "PLAINTEXT", "eventflow-orders", None)
    assert config(groupId="mine").group_id("orders") == "mine"


def test_bootstrap_servers_accept_a_comma_separated_string() -> None:
    """'a:1, b:2' is the list ['a:1', 'b:2']."""
    cfg = config(bootstrapServers="kafka-0:9092, kafka-1:9092,")
    assert cfg.bootstrapServers == ["kafka-0:9092", "kafka-1:9092"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"bootstrapServers": "kafka"},
            "bootstrapServers: Value error, 'kafka' is not host:port; write e.g."
            " kafka-0.kafka:9092 or 127.0.0.1:9092, several as a list or separated by commas",
        ),
        (
            {"bootstrapServers": ""},
            "bootstrapServers: List should have at least 1 item after validation, not 0",
        ),
        (
            {"topics": ["bad topic"]},
            "topics: Value error, 'bad topic' is not a Kafka topic name; use 1-249 letters,"
            " digits, '.', '_' or '-'",
        ),
        (
            {"topics": None},
            "Value error, give exactly one of topics (a list) or topicPattern (a regex)",
        ),
        (
            {"topicPattern": "orders-.*"},
            "Value error, give exactly one of topics (a list) or topicPattern (a regex)",
        ),
        (
            {"topics": None, "topicPattern": "("},
            "topicPattern: Value error, '(' is not a regular expression: missing ),"
            " unterminated subpattern at position 0",
        ),
        (
            {"deadLetterTopic": "orders"},
            "Value error, deadLetterTopic 'orders' is one of the topics this sensor reads;"
            " a poison record would come back forever: choose another topic",
        ),
        (
            {"topics": None, "topicPattern": "ord.*", "deadLetterTopic": "orders.dead"},
            "Value error, deadLetterTopic 'orders.dead' is one of the topics this sensor reads;"
            " a poison record would come back forever: choose another topic",
        ),
        ({"valueFormat": "xml"}, "valueFormat: Input should be 'json', 'text', 'base64' or 's3'"),
        (
            {"s3": {"prefix": "in/"}},
            "Value error, s3 applies only to valueFormat s3; set valueFormat: s3 or remove s3",
        ),
        (
            {"valueFormat": "s3", "event": {"type": "x"}},
            "Value error, event templates do not apply to valueFormat s3: each object change"
            " becomes the event the S3 mapping gives it; remove event",
        ),
        (
            {"valueFormat": "s3", "s3": {"events": ["s3:ObjectMade:*"]}},
            "s3.events: Value error, 's3:ObjectMade:*' is not an S3 event name; write an S3"
            " event name such as 's3:ObjectCreated:*', 's3:ObjectCreated:Put' or"
            " 's3:ObjectRemoved:Delete'; the families are ObjectCreated, ObjectRemoved,"
            " ObjectRestore, ObjectTagging, ObjectAcl, ObjectAccessed, Replication,"
            " LifecycleExpiration, LifecycleTransition, IntelligentTiering,"
            " ReducedRedundancyLostObject",
        ),
        ({"startFrom": "now"}, "startFrom: Input should be 'latest' or 'earliest'"),
        ({"maxRecordBytes": 0}, "maxRecordBytes: Input should be greater than or equal to 1"),
        ({"groupID": "x"}, "groupID: Extra inputs are not permitted"),
        (
            {"event": {"type": "{{ body.kind }}"}},
            "event.type: Value error, 'body.kind' refers to body, which is not defined here;"
            " available: record",
        ),
        (
            {"event": {"id": 3}},
            'event.id: Value error, a template is a string like "com.example.{{ record.topic }}",'
            " got 3",
        ),
    ],
)
def test_bad_config_is_refused_with_a_message_that_says_what_to_write(
    spec: dict[str, Any], message: str
) -> None:
    """Each bad field is named with its value and what is accepted."""
    assert config_error(**spec) == message


@pytest.mark.parametrize(
    ("security", "message"),
    [
        (
            {"protocol": "SASL_SSL", "saslMechanism": "PLAIN"},
            "security: Value error, protocol SASL_SSL needs saslMechanism, username and"
            " password; missing username, password",
        ),
        (
            {"username": "u"},
            "security: Value error, username apply only to SASL_PLAINTEXT and SASL_SSL, not to"
            " PLAINTEXT; set protocol: SASL_SSL or remove them",
        ),
        (
            {
                "protocol": "SASL_PLAINTEXT",
                "caFile": "/ca.pem",
                "saslMechanism": "PLAIN",
                "username": "u",
                "password": {"env": "P"},
            },
            "security: Value error, caFile applies only to SSL and SASL_SSL, not to"
            " SASL_PLAINTEXT; set protocol: SSL (or SASL_SSL) or remove caFile",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "saslMechanism": "GSSAPI",
                "username": "u",
                "password": {"env": "P"},
            },
            "security.saslMechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "saslMechanism": "PLAIN",
                "username": "u",
                "password": "hunter2",
            },
            "security.password: Value error, an inline secret is not accepted: YAML ends up in"
            " git; use {env: NAME} for an environment variable or {file: /path} for a file such"
            " as a Secret mount",
        ),
    ],
)
def test_bad_security_is_refused(security: dict[str, Any], message: str) -> None:
    """SASL needs mechanism, user and password from env/file; TLS-only fields need TLS."""
    assert config_error(security=security) == message


def test_sasl_ssl_with_ca_file_is_accepted() -> None:
    """A complete SCRAM over TLS block validates."""
    cfg = config(
        security={
            "protocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-512",
            "username": "eventflow",
            "password": {"file": "/run/secrets/kafka"},
            "caFile": "/etc/ca.pem",
        }
    )
    assert cfg.security.saslMechanism == "SCRAM-SHA-512"
    assert cfg.security.password is not None
    assert cfg.security.password.file == "/run/secrets/kafka"


# --- backoff ------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_maximum() -> None:
    """0.5, 1, 2, ... capped at maximum, even for a huge attempt number."""
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.delay(10_000) == 3.0
