"""The pure core of the NATS sensor: config validation and message -> CloudEvent."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from eventflow.errors import TemporaryError
from eventflow.events import Event
from eventflow.sensing.secrets import SecretSource
from eventflow.sensing.state import memory_context
from sensors.nats import NatsConfig, NatsSensor, plugin
from sensors.nats.config import check_subject
from sensors.nats.normalizing import (
    POISON_TYPE,
    NatsMessage,
    PoisonMessage,
    default_id,
    normalize,
    poison_event,
)
from sensors.nats.sensor import backoff, connect_options

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def config(**spec: Any) -> NatsConfig:
    spec.setdefault("subjects", ["orders.>"])
    return NatsConfig.model_validate(spec)


def message(data: bytes = b'{"n": 1}', subject: str = "orders.eu", **rest: Any) -> NatsMessage:
    return NatsMessage(subject=subject, data=data, **rest)


def fixed_id() -> str:
    return "new-id"


def poison_reason(msg: NatsMessage, cfg: NatsConfig | None = None) -> str:
    with pytest.raises(PoisonMessage) as caught:
        normalize(msg, cfg or config(), NOW, fixed_id)
    return caught.value.reason


def config_error(**spec: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        NatsConfig.model_validate(spec)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return str(errors[0]["msg"])


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject", ["orders", "orders.eu", "orders.*", "orders.*.created", "orders.>", ">", "*"]
)
def test_valid_subjects_with_wildcards_are_accepted(subject: str) -> None:
    """Plain subjects, `*` tokens and a trailing `>` are subscribable subjects."""
    assert check_subject(subject, wildcards=True) == subject


@pytest.mark.parametrize(
    ("subject", "message_start"),
    [
        ("", "'' is not a NATS subject"),
        ("orders eu", "'orders eu' is not a NATS subject"),
        ("orders.", "'orders.' has an empty token"),
        (".orders", "'.orders' has an empty token"),
        ("a..b", "'a..b' has an empty token"),
        ("orders.e*", "'orders.e*': token 'e*' mixes a wildcard with text"),
        ("orders.>x", "'orders.>x': token '>x' mixes a wildcard with text"),
        ("orders.>.eu", "'orders.>.eu': '>' must be the last token"),
    ],
)
def test_malformed_subjects_are_refused_with_the_rule(subject: str, message_start: str) -> None:
    """Each malformed subject names itself and the fault."""
    with pytest.raises(ValueError, match=r"NATS subject|token") as caught:
        check_subject(subject, wildcards=True)
    assert str(caught.value).startswith(message_start)


def test_wildcard_is_refused_where_one_subject_is_needed() -> None:
    """A dead-letter subject is published to, so it cannot hold a wildcard."""
    assert config_error(subjects=["a"], deadLetterSubject="dead.*") == (
        "Value error, 'dead.*' has a wildcard; a subject to publish to names one subject"
    )


def test_defaults_are_the_documented_ones() -> None:
    """Local server, JSON payloads, 1 MiB, no queue group given, no dead-letter subject."""
    cfg = config()
    assert cfg.servers == ["nats://127.0.0.1:4222"]
    assert (cfg.payloadFormat, cfg.maxMessageBytes) == ("json", 1_048_576)
    assert (cfg.queueGroup, cfg.deadLetterSubject, cfg.credentials) == (None, None, None)


def test_url_list_gives_every_server() -> None:
    """A list of cluster URLs is kept in order."""
    cfg = config(url=["nats://a:4222", "tls://b:4222"])
    assert cfg.servers == ["nats://a:4222", "tls://b:4222"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://a:4222",
            "Value error, 'http://a:4222' is not a NATS server URL; start it with nats://,"
            " tls://, ws://, wss://, e.g. 'nats://127.0.0.1:4222'",
        ),
        ([], "Value error, give at least one server URL, e.g. 'nats://127.0.0.1:4222'"),
    ],
)
def test_bad_urls_are_refused(url: Any, expected: str) -> None:
    """A URL of another scheme, or an empty list, is refused with an example."""
    assert config_error(subjects=["a"], url=url) == expected


def test_subjects_and_jetstream_are_exclusive() -> None:
    """Exactly one source: subjects or jetstream."""
    both = {"stream": "S", "consumer": "c"}
    assert config_error(subjects=["a"], jetstream=both) == (
        "Value error, give exactly one of subjects (core NATS) or jetstream (a durable"
        " consumer); got both"
    )
    assert config_error().endswith("got neither")


def test_queue_group_is_refused_with_jetstream() -> None:
    """A queue group means nothing to a pull consumer."""
    assert config_error(queueGroup="g", jetstream={"stream": "S", "consumer": "c"}) == (
        "Value error, queueGroup applies to core NATS subjects; JetStream replicas share work"
        " through jetstream.consumer"
    )


def test_the_s3_block_and_payload_format_s3_go_together_without_templates() -> None:
    """s3 filters need payloadFormat s3; event templates never apply to it; its filters are
    checked as spec.objectstore's are."""
    assert config_error(subjects=["minio"], s3={"prefix": "in/"}) == (
        "Value error, s3 applies only to payloadFormat s3; set payloadFormat: s3 or remove s3"
    )
    assert config_error(subjects=["minio"], payloadFormat="s3", event={"type": "x"}) == (
        "Value error, event templates do not apply to payloadFormat s3: each object change"
        " becomes the event the S3 mapping gives it; remove event"
    )
    assert config_error(
        subjects=["minio"], payloadFormat="s3", s3={"minSize": 5, "maxSize": 1}
    ) == ("Value error, minSize 5 is larger than maxSize 1; no object fits")
    valid = NatsConfig.model_validate(
        {"subjects": ["minio"], "payloadFormat": "s3", "s3": {"bucket": "raw-data"}}
    )
    assert (valid.s3.bucket, valid.s3.dedupe.windowSeconds) == ("raw-data", 86_400.0)


def test_unknown_fields_are_refused() -> None:
    """A typo in a field name is an error, not ignored."""
    with pytest.raises(ValidationError, match="subjetcs"):
        NatsConfig.model_validate({"subjects": ["a"], "subjetcs": ["b"]})


@pytest.mark.parametrize("name", ["my stream", "a.b", "a*", "a>"])
def test_jetstream_names_with_reserved_characters_are_refused(name: str) -> None:
    """Stream and consumer names cannot hold spaces, dots or wildcards."""
    assert config_error(jetstream={"stream": name, "consumer": "c"}) == (
        f"Value error, {name!r} is not a JetStream name; use letters, digits, - and _"
        " (no spaces, '.', '*' or '>')"
    )


def test_start_time_goes_with_by_start_time() -> None:
    """by_start_time needs startTime, and startTime needs by_start_time."""
    expected = (
        "Value error, startTime goes with deliverPolicy by_start_time, and only with it;"
        " give both or neither"
    )
    assert (
        config_error(jetstream={"stream": "S", "consumer": "c", "deliverPolicy": "by_start_time"})
        == expected
    )
    assert (
        config_error(
            jetstream={"stream": "S", "consumer": "c", "startTime": "2024-01-01T00:00:00Z"}
        )
        == expected
    )
    cfg = NatsConfig.model_validate(
        {
            "jetstream": {
                "stream": "S",
                "consumer": "c",
                "deliverPolicy": "by_start_time",
                "startTime": "2024-01-01T00:00:00Z",
            }
        }
    )
    assert cfg.jetstream is not None
    assert cfg.jetstream.startTime == datetime(2024, 1, 1, tzinfo=UTC)


def test_jetstream_filter_subject_is_checked() -> None:
    """A malformed filterSubject is refused like a subject."""
    assert config_error(
        jetstream={"stream": "S", "consumer": "c", "filterSubject": "a..b"}
    ).startswith("Value error, 'a..b' has an empty token")


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ({"user": "u"}, "Value error, user and password go together; give both or neither"),
        (
            {"token": {"env": "T"}, "credsFile": "/c"},
            "Value error, give at most one way to log in (user, token, credsFile or"
            " nkeySeedFile); got token, credsFile",
        ),
        (
            {"tls": {"certFile": "/c"}},
            "Value error, certFile and keyFile go together; give both or neither",
        ),
        (
            {"token": "inline"},
            "Value error, an inline secret is not accepted: YAML ends up in git; use {env:"
            " NAME} for an environment variable or {file: /path} for a file such as a Secret"
            " mount",
        ),
    ],
)
def test_inconsistent_credentials_are_refused(credentials: dict[str, Any], expected: str) -> None:
    """Half a login, two logins, half a client certificate, an inline secret: each refused."""
    assert config_error(subjects=["a"], credentials=credentials) == expected


def test_templates_are_compiled_at_load() -> None:
    """A template naming an unknown variable fails at load, not on the first message."""
    assert "body" in config_error(subjects=["a"], event={"type": "x.{{ body.kind }}"})


def test_connect_options_read_secrets_and_files(tmp_path: Any) -> None:
    """User/password and token come from their sources; files are passed to nats-py."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    cfg = config(credentials={"user": "u", "password": {"file": str(secret)}})
    assert connect_options(cfg.credentials, {}) == {"user": "u", "password": "s3cret"}
    cfg = config(credentials={"token": {"env": "NATS_TOKEN"}})
    assert connect_options(cfg.credentials, {"NATS_TOKEN": "tok"}) == {"token": "tok"}
    cfg = config(credentials={"nkeySeedFile": "/seed"})
    assert connect_options(cfg.credentials, {}) == {"nkeys_seed": "/seed"}
    assert connect_options(None, {}) == {}


def test_missing_secret_is_a_temporary_error_naming_its_source() -> None:
    """An unset variable is retried, and the message says which variable."""
    cfg = config(credentials={"token": {"env": "NATS_TOKEN"}})
    with pytest.raises(TemporaryError) as caught:
        connect_options(cfg.credentials, {})
    assert str(caught.value) == (
        "credentials: environment variable NATS_TOKEN is not set; the sensor tries again"
    )


def test_backoff_doubles_up_to_the_cap() -> None:
    """0.5, 1, 2, ... capped at 30 seconds."""
    delays = backoff()
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_plugin_creates_a_sensor_and_refuses_another_config() -> None:
    """The entry-point object builds a NatsSensor from a NatsConfig only."""
    assert plugin.config_model is NatsConfig
    sensor = plugin.create("orders", config(), memory_context())
    assert isinstance(sensor, NatsSensor)
    assert (sensor.name, sensor.connected, sensor.poisoned) == ("orders", False, 0)
    with pytest.raises(TypeError, match="the nats plugin takes a NatsConfig, got Event"):
        plugin.create("orders", Event(id="1", source="s", type="t"), memory_context())  # type: ignore[arg-type]


# --- templated messages ---------------------------------------------------------------------


def test_json_message_becomes_an_event_with_the_defaults() -> None:
    """Type, source, subject, id and time default as documented; data is the parsed JSON."""
    event = normalize(message(), config(), NOW, fixed_id)
    assert event == Event(
        id="new-id",
        source="nats://orders.eu",
        type="eventflow.nats.message",
        subject="orders.eu",
        time=NOW,
        datacontenttype="application/json",
        data={"n": 1},
    )


def test_nats_msg_id_header_is_the_event_id() -> None:
    """A publisher's Nats-Msg-Id keeps the id across resends."""
    event = normalize(message(headers={"Nats-Msg-Id": "abc"}), config(), NOW, fixed_id)
    assert event.id == "abc"


def test_jetstream_message_id_is_stream_and_sequence() -> None:
    """Without Nats-Msg-Id, a JetStream message's id is stable across redeliveries."""
    msg = message(stream="ORDERS", sequence=42)
    assert normalize(msg, config(), NOW, fixed_id).id == "ORDERS/42"
    assert default_id(message(stream="ORDERS", sequence=42, headers={"Nats-Msg-Id": ""})) == (
        "ORDERS/42"
    )


def test_templates_see_subject_headers_and_data() -> None:
    """Every attribute template renders from msg.subject, msg.headers and msg.data."""
    cfg = config(
        event={
            "type": "com.acme.{{ msg.data.kind }}",
            "source": "/acme/{{ msg.subject }}",
            "subject": "{{ msg.headers['X-Key'] }}",
            "id": "{{ msg.data.id }}",
        }
    )
    data = b'{"kind": "created", "id": "o-1"}'
    event = normalize(message(data, headers={"X-Key": "k1"}), cfg, NOW, fixed_id)
    assert (event.type, event.source, event.subject, event.id) == (
        "com.acme.created",
        "/acme/orders.eu",
        "k1",
        "o-1",
    )


def test_empty_subject_template_gives_no_subject() -> None:
    """A subject template rendering empty leaves the subject out."""
    cfg = config(event={"subject": "{{ 'x' in msg.headers ? 'x' : '' }}"})
    assert normalize(message(), cfg, NOW, fixed_id).subject is None


def test_text_payload_is_kept_as_text() -> None:
    """payloadFormat text: the UTF-8 payload is the data, typed text/plain."""
    event = normalize(message("héllo".encode()), config(payloadFormat="text"), NOW, fixed_id)
    assert (event.data, event.datacontenttype) == ("héllo", "text/plain; charset=utf-8")


def test_base64_payload_is_kept_as_bytes_and_seen_as_base64_by_templates() -> None:
    """payloadFormat base64: bytes travel as data_base64; templates see the base64 text."""
    cfg = config(payloadFormat="base64", event={"subject": "{{ msg.data }}"})
    event = normalize(message(b"\x00\xff"), cfg, NOW, fixed_id)
    assert (event.data, event.subject) == (b"\x00\xff", "AP8=")
    assert event.datacontenttype == "application/octet-stream"
    assert event.to_dict()["data_base64"] == "AP8="


# --- poison ---------------------------------------------------------------------------------


def test_too_large_payload_is_poison_whatever_its_shape() -> None:
    """The size limit comes first, before any parsing."""
    cfg = config(maxMessageBytes=4)
    assert poison_reason(message(b'"12345"'), cfg) == (
        "payload is 7 bytes, more than maxMessageBytes (4)"
    )
    assert normalize(message(b'"12"'), cfg, NOW, fixed_id).data == "12"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"{",
            "payload is not valid JSON (payloadFormat json expects a JSON value, so the payload"
            " expected): Expecting property name enclosed in double quotes at 1:2",
        ),
        (
            b"",
            "payload is empty; payloadFormat json expects a JSON value, so the payload is a JSON value",
        ),
        (
            b"NaN",
            "payload is not valid JSON (payloadFormat json expects a JSON value, so the payload"
            " expected): NaN is not a JSON number",
        ),
        (
            b"\xff",
            "payload is not UTF-8 text: invalid start byte at byte 0; set payloadFormat base64"
            " for binary payloads",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "payload is not valid JSON: it is nested too deeply"),
    ],
)
def test_bad_json_is_poison(data: bytes, expected: str) -> None:
    """Broken JSON, empty, NaN, non-UTF-8 and absurd nesting are each poison with a reason."""
    assert poison_reason(message(data), config(maxMessageBytes=1_000_000)) == expected


def test_non_utf8_text_is_poison() -> None:
    """payloadFormat text refuses bytes that are not UTF-8."""
    assert poison_reason(message(b"a\xffb"), config(payloadFormat="text")) == (
        "payload is not UTF-8 text: invalid start byte at byte 1; set payloadFormat base64"
        " for binary payloads"
    )


def test_failing_template_is_poison() -> None:
    """A template that fails on one message names the attribute and the template."""
    cfg = config(event={"type": "{{ msg.data.kind }}"})
    reason = poison_reason(message(b'{"other": 1}'), cfg)
    assert reason.startswith(
        "event.type: the template '{{ msg.data.kind }}' failed on this message: "
    )


def test_template_rendering_empty_is_poison() -> None:
    """A required attribute that renders empty is poison."""
    cfg = config(event={"id": "{{ msg.data.id }}"})
    assert poison_reason(message(b'{"id": ""}'), cfg) == (
        "event.id: the template '{{ msg.data.id }}' gave an empty string for this message;"
        " a CloudEvent needs a non-empty id"
    )


def test_poison_event_reports_the_message() -> None:
    """The poison event carries reason, subject, headers, size and the payload that fits."""
    msg = message(b"{", stream="S", sequence=7, headers={"a": "b"})
    event = poison_event(msg, "why", config(), NOW, fixed_id)
    assert event == Event(
        id="poison/S/7",
        source="nats://orders.eu",
        type=POISON_TYPE,
        subject="orders.eu",
        time=NOW,
        datacontenttype="application/json",
        data={
            "reason": "why",
            "subject": "orders.eu",
            "headers": {"a": "b"},
            "size": 1,
            "payloadBase64": base64.b64encode(b"{").decode(),
        },
    )


def test_poison_event_leaves_out_a_payload_too_large() -> None:
    """An oversized payload is not copied into the report, only its size."""
    event = poison_event(message(b"12345"), "big", config(maxMessageBytes=4), NOW, fixed_id)
    assert event.data == {"reason": "big", "subject": "orders.eu", "headers": {}, "size": 5}
    assert event.id == "poison/new-id"


# --- CloudEvents NATS binding ---------------------------------------------------------------


def test_structured_cloudevent_is_taken_as_sent() -> None:
    """Content-Type application/cloudevents+json: the payload is the event."""
    document = b'{"specversion":"1.0","id":"e1","source":"/s","type":"t","data":{"x":1}}'
    headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    event = normalize(message(document, headers=headers), config(), NOW, fixed_id)
    assert event == Event(id="e1", source="/s", type="t", data={"x": 1})


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            b'{"specversion":"1.0","source":"/s","type":"t"}',
            "not a valid CloudEvent: id: required, a non-empty string",
        ),
        (b"[1]", "not a valid CloudEvent: a structured CloudEvent is a JSON object"),
        (
            b'{"specversion":"0.3","id":"e","source":"/s","type":"t"}',
            "not a valid CloudEvent: specversion: '0.3' is not supported; eventflow speaks '1.0'",
        ),
        (
            b"nope",
            "payload is not valid JSON (a structured CloudEvent expected): Expecting value at 1:1",
        ),
    ],
)
def test_invalid_structured_cloudevent_is_poison(document: bytes, expected: str) -> None:
    """A structured event missing an attribute, not an object, or not JSON, is poison."""
    headers = {"content-type": "application/cloudevents+json"}
    assert poison_reason(message(document, headers=headers)) == expected


def test_binary_cloudevent_maps_headers_to_attributes() -> None:
    """ce-* headers are attributes and extensions; Content-Type types the JSON data."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e2",
        "ce-source": "/orders",
        "ce-type": "order.created",
        "ce-subject": "o-9",
        "ce-time": "2024-01-02T03:04:05Z",
        "ce-dataschema": "https://x/s.json",
        "ce-traceparent": "00-1",
        "Content-Type": "application/json",
        "other": "ignored",
    }
    event = normalize(message(b'{"total": 3}', headers=headers), config(), NOW, fixed_id)
    assert event == Event(
        id="e2",
        source="/orders",
        type="order.created",
        subject="o-9",
        time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        dataschema="https://x/s.json",
        datacontenttype="application/json",
        data={"total": 3},
        extensions={"traceparent": "00-1"},
    )


@pytest.mark.parametrize(
    ("content_type", "payload", "data"),
    [
        ("text/plain", b"hi", "hi"),
        ("application/octet-stream", b"\x00\x01", b"\x00\x01"),
        (None, b"\x00", b"\x00"),
        ("application/vnd.acme+json", b"[1]", [1]),
        ("application/json", b"", None),
    ],
)
def test_binary_cloudevent_data_follows_content_type(
    content_type: str | None, payload: bytes, data: Any
) -> None:
    """JSON types are parsed, text decoded, anything else kept as bytes; empty is no data."""
    headers = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "/s", "ce-type": "t"}
    if content_type is not None:
        headers["content-type"] = content_type
    event = normalize(message(payload, headers=headers), config(), NOW, fixed_id)
    assert (event.data, event.datacontenttype) == (data, content_type)


@pytest.mark.parametrize(
    ("extra", "payload", "expected"),
    [
        ({"ce-type": ""}, b"", "not a valid CloudEvent: type: required, a non-empty string"),
        (
            {"ce-time": "yesterday"},
            b"",
            "not a valid CloudEvent: time: 'yesterday' is not an RFC 3339 timestamp",
        ),
        (
            {"ce-Bad_Name": "x"},
            b"",
            "not a valid CloudEvent: extension 'bad_name': names are 1-20 lowercase letters or"
            " digits and cannot reuse a core attribute",
        ),
        (
            {"content-type": "application/json"},
            b"{",
            "payload is not valid JSON (the data of a JSON CloudEvent expected): Expecting"
            " property name enclosed in double quotes at 1:2",
        ),
        (
            {"content-type": "text/plain"},
            b"\xff",
            "the data of a text CloudEvent is not UTF-8 text: invalid start byte at byte 0;"
            " set payloadFormat base64 for binary payloads",
        ),
    ],
)
def test_invalid_binary_cloudevent_is_poison(
    extra: dict[str, str], payload: bytes, expected: str
) -> None:
    """A binary event with a bad attribute, extension name or data is poison."""
    headers = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "/s", "ce-type": "t", **extra}
    assert poison_reason(message(payload, headers=headers)) == expected


def test_unsupported_specversion_in_binary_mode_is_poison() -> None:
    """ce-specversion other than 1.0 is refused, naming the version."""
    headers = {"ce-specversion": "0.3", "ce-id": "e", "ce-source": "/s", "ce-type": "t"}
    assert poison_reason(message(b"", headers=headers)) == (
        "not a valid CloudEvent: specversion: '0.3' is not supported; eventflow speaks '1.0'"
    )


def test_secret_source_is_shared_with_the_webhook_sensor() -> None:
    """Credentials use the same {env|file} secret model as webhooks."""
    cfg = config(credentials={"token": {"file": "/run/secrets/nats"}})
    assert cfg.credentials is not None
    assert cfg.credentials.token == SecretSource(file="/run/secrets/nats")
