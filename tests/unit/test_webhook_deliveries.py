"""Form bodies and delivery keys: how a request's identity and fields become an event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from eventflow.sensing.protocol import HttpRequest
from sensors.webhook.config import WebhookConfig
from sensors.webhook.normalizing import Delivery, RequestError, deliveries
from tests.conftest import FIXTURES

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
ENV = {"env": "HOOK_SECRET"}
SLASH_COMMAND = (FIXTURES / "slack" / "slash-command.form").read_bytes()
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()


def config(**spec: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"path": "hooks", **spec})


def preset(name: str, **spec: Any) -> WebhookConfig:
    return config(auth={"preset": name, "secrets": [ENV]}, **spec)


def delivered(
    body: bytes, headers: dict[str, str], cfg: WebhookConfig | None = None
) -> list[Delivery]:
    request = HttpRequest("POST", "hooks", headers, {}, body)
    return deliveries(request, cfg or config(), NOW, new_id=lambda: "generated")


def refused(body: bytes, headers: dict[str, str], cfg: WebhookConfig | None = None) -> Any:
    with pytest.raises(RequestError) as caught:
        delivered(body, headers, cfg)
    return caught.value.status, caught.value.message


def test_a_slack_slash_command_form_becomes_an_object_of_its_fields() -> None:
    """Every field decoded, `/weather` and the response URL percent-decoded."""
    [delivery] = delivered(SLASH_COMMAND, FORM)
    data = delivery.event.data
    assert data["command"] == "/weather"
    assert data["text"] == "94070"
    assert data["response_url"] == "https://hooks.slack.com/commands/1234/5678"
    assert data["enterprise_name"] == "Globular Construct Inc"
    assert len(data) == 14
    assert delivery.event.datacontenttype == "application/json"


def test_github_form_mode_payload_is_parsed_as_the_json_it_holds() -> None:
    """`payload=<urlencoded JSON>`, GitHub's form content type, gives the same data as JSON."""
    body = b"payload=" + quote(PUSH.decode(), safe="").encode()
    [delivery] = delivered(body, FORM)
    assert delivery.event.data == json.loads(PUSH)


def test_repeated_fields_are_a_list_and_blank_values_are_kept() -> None:
    """`a=1&a=2&b=` -> {a: [1, 2], b: ''}; an empty form is an empty object."""
    assert delivered(b"a=1&a=2&b=&a=3", FORM)[0].event.data == {"a": ["1", "2", "3"], "b": ""}
    assert delivered(b"", FORM)[0].event.data == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"a=%ff", "form field percent-decodes to bytes that are not UTF-8 at byte 0"),
        (b"a=1&&b", "body is not a valid form: bad query field: ''"),
        (
            b"payload=%7Bnope",
            "form field payload: body is not valid JSON: Expecting property name enclosed in"
            " double quotes at 1:2",
        ),
        (b"\xff=1", "body is not valid utf-8 text: invalid start byte at byte 0"),
    ],
)
def test_a_malformed_form_is_400_naming_what_is_wrong(body: bytes, message: str) -> None:
    """Bad percent-encoding, empty fields, a payload that is not JSON, bytes that are not text."""
    assert refused(body, FORM) == (400, message)


def test_a_form_with_more_fields_than_any_provider_sends_is_400() -> None:
    """More than 1000 fields is refused rather than parsed."""
    body = "&".join(f"f{index}=1" for index in range(1001)).encode()
    assert refused(body, FORM) == (400, "body is not a valid form: Max number of fields exceeded")


@pytest.mark.parametrize(
    ("name", "headers", "body", "key"),
    [
        ("github", {"x-github-delivery": "72d3162e-cc78"}, b"{}", "72d3162e-cc78"),
        ("gitlab", {"x-gitlab-event-uuid": "f7b4d2a1"}, b"{}", "f7b4d2a1"),
        ("stripe", {}, b'{"id": "evt_1", "type": "charge.succeeded"}', "evt_1"),
        ("github", {}, b"{}", None),
        ("stripe", {}, b"[1]", None),
        ("bitbucket", {"x-request-uuid": "r-1"}, b"{}", None),
    ],
)
def test_presets_name_their_delivery_id_and_the_event_takes_it_as_its_id(
    name: str, headers: dict[str, str], body: bytes, key: str | None
) -> None:
    """GitHub/GitLab headers, Stripe's event id; absent: no key and a generated event id."""
    [delivery] = delivered(body, {**JSON, **headers}, preset(name))
    assert delivery.key == key
    assert delivery.event.id == (key or "generated")


def test_an_event_id_template_wins_over_the_delivery_id_for_the_event_id() -> None:
    """The key stays the delivery id; the event id is what the template renders."""
    cfg = preset("github", event={"id": "gh-{{ headers['x-github-delivery'] }}"})
    [delivery] = delivered(b"{}", {**JSON, "x-github-delivery": "d-9"}, cfg)
    assert (delivery.key, delivery.event.id) == ("d-9", "gh-d-9")


def test_a_configured_delivery_id_template_names_the_key() -> None:
    """dedupe.deliveryId over the body; an empty rendering means no key."""
    cfg = config(dedupe={"deliveryId": "{{ body.order }}"})
    assert delivered(b'{"order": "o-7"}', JSON, cfg)[0].key == "o-7"
    assert delivered(b'{"order": ""}', JSON, cfg)[0].key is None


def test_a_delivery_id_template_failing_on_a_request_is_400() -> None:
    """The message names the setting and the template, as event templates do."""
    cfg = config(dedupe={"deliveryId": "{{ body.order }}"})
    status, message = refused(b'{"other": 1}', JSON, cfg)
    assert status == 400
    assert message.startswith(
        "dedupe.deliveryId: the template '{{ body.order }}' failed on this request:"
    )


def test_cloudevents_are_keyed_by_source_and_id_in_every_mode() -> None:
    """Structured, batch and binary: the key is [source, id], whatever the preset."""
    event = {"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "t"}
    structured = {"content-type": "application/cloudevents+json"}
    batch = {"content-type": "application/cloudevents-batch+json"}
    binary = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/orders", "ce-type": "t"}
    keys = [
        *[d.key for d in delivered(json.dumps(event).encode(), structured)],
        *[d.key for d in delivered(json.dumps([event, {**event, "id": "e-2"}]).encode(), batch)],
        *[d.key for d in delivered(b"", binary)],
    ]
    assert keys == [
        '["/orders","e-1"]',
        '["/orders","e-1"]',
        '["/orders","e-2"]',
        '["/orders","e-1"]',
    ]


def test_dedupe_turned_off_gives_no_keys() -> None:
    """dedupe.enabled false: every delivery is published, even with a delivery id."""
    cfg = preset("github", dedupe={"enabled": False})
    [delivery] = delivered(b"{}", {**JSON, "x-github-delivery": "d-1"}, cfg)
    assert delivery.key is None


def test_kept_headers_become_extensions_and_the_senders_own_extension_wins() -> None:
    """x-github-event -> xgithubevent; a CloudEvent's own attribute of that name is kept."""
    headers = {**JSON, "x-github-event": "push", "x-github-delivery": "d-1"}
    [plain] = delivered(b"{}", headers, preset("github"))
    assert plain.event.extensions == {"xgithubevent": "push", "xgithubdelivery": "d-1"}
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "e",
        "ce-source": "/s",
        "ce-type": "t",
        "ce-xgithubevent": "mine",
        "x-github-event": "push",
    }
    [event] = delivered(b"", binary, preset("github"))
    assert event.event.extensions == {"xgithubevent": "mine"}


@pytest.mark.parametrize(
    ("dedupe", "message"),
    [
        ({"window": "soon"}, "Value error, 'soon' is not a duration; write a number with a unit:"),
        ({"window": 0}, "Input should be greater than 0"),
        ({"deliveryId": "{{ nope }}"}, "Value error, "),
    ],
)
def test_a_bad_dedupe_setting_is_a_load_time_error(dedupe: dict[str, Any], message: str) -> None:
    """Windows are positive durations; templates compile at load."""
    with pytest.raises(ValidationError) as caught:
        config(dedupe=dedupe)
    [error] = caught.value.errors()
    assert error["loc"][0] == "dedupe"
    assert error["msg"].startswith(message)


def test_dedupe_window_takes_a_duration_and_defaults_to_a_day() -> None:
    """24h is the default; 30m is 1800 seconds."""
    assert config().dedupe.window == 86_400.0
    assert config(dedupe={"window": "30m"}).dedupe.window == 1800.0
