"""The webhook sensor's pure core: config validation and request -> CloudEvents."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from eventflow.events import Event
from eventflow.sensing.protocol import HttpRequest
from sensors.webhook.config import WebhookConfig
from sensors.webhook.normalizing import (
    ACCEPTED_CONTENT_TYPES,
    RequestError,
    is_batch,
    normalize,
    parse_media_type,
)
from tests.conftest import FIXTURES as ROOT_FIXTURES

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
FIXTURES = ROOT_FIXTURES / "github"
GITHUB = WebhookConfig.model_validate(
    {
        "path": "github",
        "event": {
            "type": "com.github.{{ headers['x-github-event'] }}",
            "source": "https://github.com",
            "subject": "{{ body.repository.full_name }}",
            "id": "{{ headers['x-github-delivery'] }}",
        },
    }
)
DEFAULT = WebhookConfig.model_validate({"path": "hooks"})
JSON = {"content-type": "application/json"}


def request(
    body: bytes | str = b"{}",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    query: dict[str, str] | None = None,
    path: str = "hooks",
) -> HttpRequest:
    raw = body.encode() if isinstance(body, str) else body
    return HttpRequest(method, path, JSON if headers is None else headers, query or {}, raw)


def config(**event: str) -> WebhookConfig:
    return WebhookConfig.model_validate({"path": "hooks", "event": event})


def one(req: HttpRequest, cfg: WebhookConfig = DEFAULT) -> Event:
    events = normalize(req, cfg, NOW, new_id=lambda: "generated")
    assert len(events) == 1
    return events[0]


def rejected(req: HttpRequest, cfg: WebhookConfig = DEFAULT) -> tuple[int, str]:
    with pytest.raises(RequestError) as caught:
        normalize(req, cfg, NOW)
    assert str(caught.value) == caught.value.message
    return caught.value.status, caught.value.message


def validation_problems(document: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        WebhookConfig.model_validate(document)
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


# --- config ------------------------------------------------------------------------------


def test_config_defaults_accept_post_up_to_one_mebibyte() -> None:
    """A config with only a path takes POST, 1 MiB, and the default event type."""
    assert DEFAULT.methods == ["POST"]
    assert DEFAULT.maxBodyBytes == 1_048_576
    assert DEFAULT.event.type.source == "eventflow.webhook"
    assert (DEFAULT.event.source, DEFAULT.event.subject, DEFAULT.event.id) == (None, None, None)


def test_config_methods_are_upper_cased() -> None:
    """`methods: [post, put]` is read as POST and PUT."""
    cfg = WebhookConfig.model_validate({"path": "a", "methods": ["post", "Put"]})
    assert cfg.methods == ["POST", "PUT"]


def test_config_dumps_templates_as_their_source() -> None:
    """model_dump gives back the templates as the user wrote them."""
    assert GITHUB.model_dump()["event"] == {
        "type": "com.github.{{ headers['x-github-event'] }}",
        "source": "https://github.com",
        "subject": "{{ body.repository.full_name }}",
        "id": "{{ headers['x-github-delivery'] }}",
    }


def test_config_template_naming_an_unknown_variable_is_a_validation_error() -> None:
    """A template referring to `event` fails at load, listing the variables available."""
    assert validation_problems({"path": "a", "event": {"type": "x.{{ event.kind }}"}}) == [
        (
            ("event", "type"),
            "Value error, 'event.kind' refers to event, which is not defined here;"
            " available: body, headers, method, path, query",
        )
    ]


def test_config_template_with_bad_cel_is_a_validation_error() -> None:
    """A syntax error in a template is reported with the CEL message."""
    assert validation_problems({"path": "a", "event": {"subject": "{{ body. }}"}}) == [
        (
            ("event", "subject"),
            "Value error, 'body.' is not valid CEL: 1:6: Syntax error:"
            " no viable alternative at input '.'",
        )
    ]


def test_config_template_must_be_a_string() -> None:
    """`id: 5` is rejected with an example of a template."""
    assert validation_problems({"path": "a", "event": {"id": 5}}) == [
        (
            ("event", "id"),
            'Value error, a template is a string like "com.example.{{ body.kind }}", got 5',
        )
    ]


def test_config_unclosed_template_is_a_validation_error() -> None:
    """`{{` without `}}` is rejected."""
    assert validation_problems({"path": "a", "event": {"type": "x.{{ body"}}) == [
        (("event", "type"), "Value error, 'x.{{ body': '{{' without a closing '}}'")
    ]


PATH_ACCEPTED = (
    "use letters, digits and . _ ~ - in segments separated by single /,"
    " without a leading or trailing /, e.g. 'github' or 'acme/orders'"
)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/github", "'/github' starts with /; write it without, e.g. 'github'"),
        ("", f"'' is not a webhook path; {PATH_ACCEPTED}"),
        ("a b", f"'a b' is not a webhook path; {PATH_ACCEPTED}"),
        ("a?b", f"'a?b' is not a webhook path; {PATH_ACCEPTED}"),
        ("a//b", f"'a//b' has an empty, '.' or '..' segment; {PATH_ACCEPTED}"),
        ("a/", f"'a/' has an empty, '.' or '..' segment; {PATH_ACCEPTED}"),
        ("a/../b", f"'a/../b' has an empty, '.' or '..' segment; {PATH_ACCEPTED}"),
    ],
)
def test_config_bad_path_is_rejected_with_what_is_accepted(path: str, message: str) -> None:
    """Paths outside [A-Za-z0-9._~/-] segments, or with a leading /, are refused."""
    assert validation_problems({"path": path}) == [(("path",), f"Value error, {message}")]


def test_config_accepts_nested_path() -> None:
    """`acme/orders.v2` is a valid path."""
    assert (
        WebhookConfig.model_validate({"path": "acme/orders.v2_~x-y"}).path == "acme/orders.v2_~x-y"
    )


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {"path": "a", "methods": ["GET"]},
            [(("methods", 0), "Input should be 'POST', 'PUT' or 'PATCH'")],
        ),
        (
            {"path": "a", "methods": []},
            [(("methods",), "List should have at least 1 item after validation, not 0")],
        ),
        (
            {"path": "a", "maxBodyBytes": 0},
            [(("maxBodyBytes",), "Input should be greater than or equal to 1")],
        ),
        ({"path": "a", "maxbodybytes": 5}, [(("maxbodybytes",), "Extra inputs are not permitted")]),
        (
            {"path": "a", "event": {"kind": "x"}},
            [(("event", "kind"), "Extra inputs are not permitted")],
        ),
        ({}, [(("path",), "Field required")]),
    ],
)
def test_config_rejects_bad_fields(
    document: dict[str, Any], expected: list[tuple[tuple[int | str, ...], str]]
) -> None:
    """Unknown fields, bad methods and sizes are validation errors at their field path."""
    assert validation_problems(document) == expected


# --- content types -----------------------------------------------------------------------


def test_media_type_parsing_lowers_the_essence_and_reads_a_quoted_charset() -> None:
    """`Application/JSON; Charset="UTF-8"` has essence application/json and charset utf-8."""
    media = parse_media_type('Application/JSON; Charset="UTF-8"')
    assert media is not None
    assert (media.essence, media.charset, media.is_json) == ("application/json", "utf-8", True)
    assert parse_media_type("  ") is None
    assert parse_media_type(None) is None


@pytest.mark.parametrize(
    ("value", "is_json"),
    [
        ("application/json", True),
        ("application/vnd.github+json", True),
        ("application/problem+json; charset=utf-8", True),
        ("application/cloudevents+json", False),
        ("application/cloudevents-batch+json", False),
        ("text/json", False),
        ("application/jsonx", False),
        ("text/plain", False),
    ],
)
def test_json_media_types_are_application_json_and_plus_json(value: str, is_json: bool) -> None:
    """Only application/json and non-CloudEvents +json types count as JSON data."""
    media = parse_media_type(value)
    assert media is not None
    assert media.is_json is is_json


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"content-type": "text/plain"},
            f"content-type 'text/plain' is not accepted; send {ACCEPTED_CONTENT_TYPES}",
        ),
        (
            {"content-type": "multipart/form-data; boundary=x"},
            f"content-type 'multipart/form-data' is not accepted; send {ACCEPTED_CONTENT_TYPES}",
        ),
        ({}, f"the request has no content-type; send {ACCEPTED_CONTENT_TYPES}"),
        ({"content-type": ""}, f"the request has no content-type; send {ACCEPTED_CONTENT_TYPES}"),
    ],
)
def test_unaccepted_content_type_is_415_naming_the_accepted_ones(
    headers: dict[str, str], message: str
) -> None:
    """Text, multipart forms and missing content types are refused with 415."""
    assert rejected(request(b"a=1", headers)) == (415, message)


# --- plain JSON requests -----------------------------------------------------------------

GITHUB_FIXTURES = sorted(FIXTURES.glob("*.json"))


@pytest.mark.parametrize("fixture", GITHUB_FIXTURES, ids=lambda path: path.name)
def test_github_delivery_becomes_an_event_from_the_templates(fixture: Path) -> None:
    """A real GitHub delivery gets type from X-GitHub-Event, id from X-GitHub-Delivery."""
    github_event = fixture.name.split("--")[0]
    raw = fixture.read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": github_event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Hook-ID": "292430182",
        "User-Agent": "GitHub-Hookshot/044aadd",
    }
    event = one(request(raw, headers, path="github"), GITHUB)
    payload = json.loads(raw)
    assert event.type == f"com.github.{github_event}"
    assert event.subject == payload["repository"]["full_name"]
    assert event.id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.source == "https://github.com"
    assert event.data == payload
    assert event.time == NOW
    assert event.datacontenttype == "application/json"
    assert event.extensions == {}


def test_github_fixtures_cover_every_event_kind() -> None:
    """The fixture set holds the deliveries the test above is meant to exercise."""
    assert {path.name.split("--")[0] for path in GITHUB_FIXTURES} == {
        "ping",
        "pull_request",
        "push",
        "release",
        "workflow_run",
    }


def test_plain_request_with_default_templates() -> None:
    """Without templates: type eventflow.webhook, source /webhooks/<path>, no subject."""
    event = one(request('{"a": 1}'))
    assert event == Event(
        id="generated",
        source="/webhooks/hooks",
        type="eventflow.webhook",
        time=NOW,
        datacontenttype="application/json",
        data={"a": 1},
    )


def test_default_id_is_a_new_uuid4_per_request() -> None:
    """Without an id template each request gets a distinct random UUID."""
    first = normalize(request(), DEFAULT, NOW)[0].id
    second = normalize(request(), DEFAULT, NOW)[0].id
    assert uuid.UUID(first).version == 4
    assert uuid.UUID(second).version == 4
    assert first != second


def test_templates_see_query_path_method_and_body() -> None:
    """Every template variable is available and rendered as text."""
    cfg = config(
        type="shop.{{ query.kind }}.{{ method }}",
        source="/{{ path }}",
        subject="{{ body.order.lines[1].sku }}-{{ body.order.total }}",
        id="{{ body.order.id }}",
    )
    body = {"order": {"id": 42, "total": 9.5, "lines": [{"sku": "a"}, {"sku": "b"}]}}
    event = one(request(json.dumps(body), method="put", query={"kind": "order"}), cfg)
    assert (event.type, event.source, event.subject, event.id) == (
        "shop.order.PUT",
        "/hooks",
        "b-9.5",
        "42",
    )


def test_header_names_in_templates_are_lower_case_whatever_the_sender_wrote() -> None:
    """`X-Event-Kind` is read as headers['x-event-kind']."""
    cfg = config(type="{{ headers['x-event-kind'] }}")
    headers = {"Content-Type": "Application/JSON", "X-Event-Kind": "created"}
    assert one(request("{}", headers), cfg).type == "created"


def test_subject_rendering_empty_means_no_subject() -> None:
    """A subject template that renders to '' leaves the subject unset."""
    assert one(request('{"who": ""}'), config(subject="{{ body.who }}")).subject is None


@pytest.mark.parametrize("attribute", ["type", "source", "id"])
def test_required_attribute_rendering_empty_is_400(attribute: str) -> None:
    """type, source and id cannot be empty: the 400 names the attribute and template."""
    cfg = config(**{attribute: "{{ body.v }}"})
    assert rejected(request('{"v": ""}'), cfg) == (
        400,
        f"event.{attribute}: the template '{{{{ body.v }}}}' gave an empty string for this"
        f" request; a CloudEvent needs a non-empty {attribute}",
    )


def test_template_failing_on_a_request_is_400_naming_the_attribute() -> None:
    """A body without the key a template reads is answered 400, not swallowed."""
    status, message = rejected(request(b'{"x": 1}', path="github"), GITHUB)
    assert (status, message) == (
        400,
        "event.type: the template \"com.github.{{ headers['x-github-event'] }}\" failed on this"
        " request: \"headers['x-github-event']\": no such key: x-github-event",
    )


def test_json_array_body_is_the_event_data() -> None:
    """Any JSON value is accepted as data, not only objects."""
    assert one(request("[1, 2, null]")).data == [1, 2, None]


def test_vendor_json_type_is_a_plain_request() -> None:
    """application/vnd.github+json is JSON."""
    assert one(request("true", {"content-type": "application/vnd.github+json"})).data is True


def test_charset_parameter_is_used_to_decode_the_body() -> None:
    """A latin-1 body declared as such decodes to the right text."""
    headers = {"content-type": "application/json; charset=ISO-8859-1"}
    assert one(request('{"name": "café"}'.encode("latin-1"), headers)).data == {"name": "café"}


def test_utf8_charset_parameter_is_accepted() -> None:
    """`charset=utf-8` is the usual case."""
    headers = {"content-type": "application/json;charset=utf-8"}
    assert one(request('{"name": "café"}', headers)).data == {"name": "café"}


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (
            b"{x",
            JSON,
            (
                400,
                "body is not valid JSON: Expecting property name enclosed in double quotes at 1:2",
            ),
        ),
        (b'{"a": 1}\n{"b": 2}', JSON, (400, "body is not valid JSON: Extra data at 2:1")),
        (b"   ", JSON, (400, "body is not valid JSON: Expecting value at 1:4")),
        (
            b"",
            JSON,
            (400, "body is empty; a request of type application/json must carry a JSON value"),
        ),
        (b'{"n": NaN}', JSON, (400, "body is not valid JSON: NaN is not a JSON number")),
        (b"-Infinity", JSON, (400, "body is not valid JSON: -Infinity is not a JSON number")),
        (b"[" * 100_000, JSON, (400, "body is not valid JSON: it is nested too deeply")),
        (
            b'{"a": "\xff"}',
            JSON,
            (400, "body is not valid utf-8 text: invalid start byte at byte 7"),
        ),
        (
            b"{}",
            {"content-type": "application/json; charset=klingon"},
            (415, "charset 'klingon' is not supported; send the body as charset=utf-8"),
        ),
        (
            b"{}",
            {"content-type": "application/json; charset=rot13"},
            (415, "charset 'rot13' is not supported; send the body as charset=utf-8"),
        ),
    ],
)
def test_bad_json_body_is_rejected_with_the_reason(
    body: bytes, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    """Malformed, empty, non-standard or mis-encoded JSON gets a precise error."""
    assert rejected(request(body, headers)) == expected


# --- binary mode -------------------------------------------------------------------------

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "https://example.com/orders",
    "ce-type": "com.example.order.created",
}


def test_binary_mode_reads_attributes_from_ce_headers() -> None:
    """ce-* headers become attributes, unknown ce-* headers extensions, the body the data."""
    headers = {
        **BINARY,
        "content-type": "application/json; charset=utf-8",
        "ce-subject": "orders/42",
        "ce-time": "2024-04-30T10:00:00+02:00",
        "ce-dataschema": "https://example.com/schema/order",
        "ce-traceparent": "00-abc-def-01",
        "x-other": "ignored",
    }
    event = one(request('{"total": 3}', headers))
    assert event == Event(
        id="A234-1234-1234",
        source="https://example.com/orders",
        type="com.example.order.created",
        subject="orders/42",
        time=datetime(2024, 4, 30, 10, tzinfo=timezone(timedelta(hours=2))),
        dataschema="https://example.com/schema/order",
        datacontenttype="application/json; charset=utf-8",
        data={"total": 3},
        extensions={"traceparent": "00-abc-def-01"},
    )


def test_binary_mode_header_names_are_case_insensitive() -> None:
    """`CE-Id` and `Ce-Type` are read like ce-id and ce-type."""
    headers = {
        "CE-SpecVersion": "1.0",
        "CE-Id": "1",
        "Ce-Source": "/s",
        "Ce-Type": "t",
        "Ce-Region": "eu",
    }
    event = one(request(b"", headers))
    assert (event.id, event.source, event.type, event.extensions) == (
        "1",
        "/s",
        "t",
        {"region": "eu"},
    )


def test_binary_mode_header_values_are_percent_decoded() -> None:
    """Per the HTTP binding, %XX sequences are decoded as UTF-8, '+' stays."""
    headers = {
        **BINARY,
        "ce-subject": "caf%C3%A9%20menu+1",
        "ce-source": "%2Fshop%25",
        "ce-note": "%22quoted%22",
    }
    event = one(request(b"", headers))
    assert (event.subject, event.source, event.extensions) == (
        "café menu+1",
        "/shop%",
        {"note": '"quoted"'},
    )


def test_binary_mode_text_data_is_decoded_with_its_charset() -> None:
    """text/* data becomes a string."""
    headers = {**BINARY, "content-type": "text/plain; charset=latin-1"}
    event = one(request("naïve".encode("latin-1"), headers))
    assert (event.data, event.datacontenttype) == ("naïve", "text/plain; charset=latin-1")


def test_binary_mode_other_data_stays_bytes() -> None:
    """application/octet-stream data is kept as the raw bytes."""
    headers = {**BINARY, "content-type": "application/octet-stream"}
    assert one(request(b"\x00\xff", headers)).data == b"\x00\xff"


def test_binary_mode_body_without_content_type_stays_bytes() -> None:
    """Data without a declared type is not guessed at."""
    event = one(request(b"raw", BINARY))
    assert (event.data, event.datacontenttype) == (b"raw", None)


def test_binary_mode_without_body_has_no_data() -> None:
    """An empty body with no content type means the event carries no data."""
    event = one(request(b"", BINARY))
    assert (event.data, event.time, event.subject) == (None, None, None)


@pytest.mark.parametrize(
    ("change", "body", "expected"),
    [
        ({"ce-id": None}, b"", "id: required, a non-empty string"),
        ({"ce-type": ""}, b"", "type: required, a non-empty string"),
        ({"ce-source": None}, b"", "source: required, a non-empty string"),
        (
            {"ce-specversion": "0.3"},
            b"",
            "specversion: '0.3' is not supported; eventflow speaks '1.0'",
        ),
        ({"ce-time": "yesterday"}, b"", "time: 'yesterday' is not an RFC 3339 timestamp"),
        (
            {"ce-time": "2024-01-01T00:00:00"},
            b"",
            "time: '2024-01-01T00:00:00' has no UTC offset; add Z or +HH:MM",
        ),
        (
            {"ce-trace_id": "1"},
            b"",
            "extension 'trace_id': names are 1-20 lowercase letters or digits"
            " and cannot reuse a core attribute",
        ),
        (
            {"ce-datacontenttype": "text/plain"},
            b"",
            "extension 'datacontenttype': names are 1-20 lowercase letters or digits"
            " and cannot reuse a core attribute",
        ),
        (
            {"ce-subject": "%FF"},
            b"",
            "header ce-subject: '%FF' percent-decodes to bytes that are not UTF-8",
        ),
        (
            {"content-type": "application/json"},
            b"{",
            "body is not valid JSON: Expecting property name enclosed in double quotes at 1:2",
        ),
        (
            {"content-type": "application/json"},
            b"",
            "body is empty; a request of type application/json must carry a JSON value",
        ),
        (
            {"content-type": "text/plain"},
            b"\xff",
            "body is not valid utf-8 text: invalid start byte at byte 0",
        ),
    ],
)
def test_bad_binary_mode_event_is_400_with_the_reason(
    change: dict[str, str | None], body: bytes, expected: str
) -> None:
    """Missing or malformed ce-* headers and undecodable data are answered 400."""
    headers = {**BINARY, **{k: v for k, v in change.items() if v is not None}}
    for name in (k for k, v in change.items() if v is None):
        del headers[name]
    assert rejected(request(body, headers)) == (400, expected)


# --- structured mode and batches ---------------------------------------------------------

STRUCTURED = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/orders",
    "type": "order.created",
    "time": "2024-04-30T08:00:00Z",
    "datacontenttype": "application/json",
    "region": "eu",
    "data": {"total": 3},
}


def test_structured_mode_body_is_one_cloudevent() -> None:
    """application/cloudevents+json is parsed as the event itself, keeping its own time."""
    headers = {"content-type": "application/cloudevents+json; charset=UTF-8"}
    event = one(request(json.dumps(STRUCTURED), headers))
    assert event == Event.from_dict(STRUCTURED)
    assert event.time == datetime(2024, 4, 30, 8, tzinfo=UTC)
    assert event.extensions == {"region": "eu"}
    assert not is_batch(headers["content-type"])


def test_structured_mode_wins_over_ce_headers() -> None:
    """With a structured content type the body is the event; stray ce-* headers are ignored."""
    headers = {**BINARY, "content-type": "application/cloudevents+json"}
    assert one(request(json.dumps(STRUCTURED), headers)).id == "e-1"


def test_structured_mode_base64_data_becomes_bytes() -> None:
    """data_base64 is decoded."""
    document = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "AAE="}
    headers = {"content-type": "application/cloudevents+json"}
    assert one(request(json.dumps(document), headers)).data == b"\x00\x01"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[]", "a structured CloudEvent is a JSON object"),
        ('{"specversion": "1.0", "id": "1", "source": "/s"}', "type: required, a non-empty string"),
        ("{", "body is not valid JSON: Expecting property name enclosed in double quotes at 1:2"),
        (
            "",
            "body is empty; a request of type application/cloudevents+json must carry a JSON value",
        ),
    ],
)
def test_bad_structured_event_is_400_with_the_reason(body: str, expected: str) -> None:
    """A structured body that is not a valid CloudEvent is answered 400."""
    headers = {"content-type": "application/cloudevents+json"}
    assert rejected(request(body, headers)) == (400, expected)


BATCH = {"content-type": "application/cloudevents-batch+json"}


def test_batch_gives_every_event_in_order() -> None:
    """A batch is a JSON array of structured events, kept in order."""
    second = {**STRUCTURED, "id": "e-2", "data": [1]}
    req = request(json.dumps([STRUCTURED, second]), BATCH)
    events = normalize(req, DEFAULT, NOW)
    assert events == [Event.from_dict(STRUCTURED), Event.from_dict(second)]
    assert is_batch(BATCH["content-type"])


def test_empty_batch_gives_no_events() -> None:
    """An empty array is a valid batch of nothing."""
    assert normalize(request("[]", BATCH), DEFAULT, NOW) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            json.dumps(STRUCTURED),
            "a CloudEvents batch is a JSON array of structured events; the body is a JSON object",
        ),
        (
            '"x"',
            "a CloudEvents batch is a JSON array of structured events; the body is a JSON string",
        ),
        (
            "3",
            "a CloudEvents batch is a JSON array of structured events; the body is a JSON number",
        ),
        (
            "null",
            "a CloudEvents batch is a JSON array of structured events; the body is a JSON null",
        ),
        (
            "false",
            "a CloudEvents batch is a JSON array of structured events; the body is a JSON boolean",
        ),
        (json.dumps([STRUCTURED, {"id": "x"}]), "event [1]: source: required, a non-empty string"),
        (json.dumps([STRUCTURED, 5]), "event [1]: a structured CloudEvent is a JSON object"),
    ],
)
def test_bad_batch_is_400_naming_the_bad_element(body: str, expected: str) -> None:
    """A batch that is not an array of valid events is answered 400 as a whole."""
    assert rejected(request(body, BATCH)) == (400, expected)
