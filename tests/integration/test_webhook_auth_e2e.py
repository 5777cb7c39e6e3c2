"""Authenticated webhook deliveries, signed as each provider signs them, through the real
sensor, the real intake and the real in-memory bus: accepted ones are on the bus, refused ones
leave nothing behind and carry no credential into an event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from eventflow.bus.memory import MemoryBus
from eventflow.events import Event
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit, HttpReply, HttpRequest
from eventflow.sensing.state import memory_context
from sensors.webhook import WebhookSensor, plugin
from tests.conftest import FIXTURES
from tests.integration.test_webhook_sensor import on_bus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()
SLACK_EVENT = json.dumps(
    {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "team_id": "T061EG9RZ",
        "api_app_id": "A0FFV41KK",
        "event": {"type": "app_mention", "user": "U061F7AUR", "text": "<@U0LAN0Z89> deploy"},
        "type": "event_callback",
        "event_id": "Ev9UQ52YNA",
        "event_time": T,
    }
).encode()
SENTINEL = Event(id="sentinel", source="/test", type="test.sentinel")
SIGNATURE_MISMATCH = {"error": "signature does not match"}
CREDENTIALS_MISMATCH = {"error": "credentials do not match"}
BEARER = {"WWW-Authenticate": 'Bearer realm="eventflow"'}
BASIC = {"WWW-Authenticate": 'Basic realm="eventflow", charset="UTF-8"'}


@pytest.fixture
def emit(bus: MemoryBus) -> Emit:
    return make_emit("hooks", bus, lambda: NOW)


def make_sensor(auth: dict[str, Any] | None, **spec: Any) -> WebhookSensor:
    config = plugin.config_model.model_validate({"path": "hooks", "auth": auth, **spec})
    sensor = plugin.create("hooks", config, memory_context())
    assert isinstance(sensor, WebhookSensor)
    return WebhookSensor(sensor.name, sensor.config, clock=lambda: NOW)


def hex_hmac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def github_push(secret: bytes, delivery: str = "d-1") -> HttpRequest:
    """A push delivery with the headers GitHub sends, signed with `secret`."""
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature": f"sha1={hmac.new(secret, PUSH, hashlib.sha1).hexdigest()}",
        "x-hub-signature-256": f"sha256={hex_hmac(secret, PUSH)}",
    }
    return HttpRequest("POST", "hooks", headers, {}, PUSH)


def slack_event(secret: bytes, timestamp: int) -> HttpRequest:
    signature = hex_hmac(secret, f"v0:{timestamp}:".encode() + SLACK_EVENT)
    headers = {
        "content-type": "application/json",
        "x-slack-request-timestamp": str(timestamp),
        "x-slack-signature": f"v0={signature}",
    }
    return HttpRequest("POST", "hooks", headers, {}, SLACK_EVENT)


def with_headers(headers: dict[str, str], body: bytes = b'{"ok": true}') -> HttpRequest:
    return HttpRequest("POST", "hooks", {"content-type": "application/json", **headers}, {}, body)


async def assert_nothing_published(bus: MemoryBus, emit: Emit) -> None:
    """The next event a consumer sees is a sentinel sent now: nothing came before it."""
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 1)] == ["sentinel"]


GITHUB_EVENT = {
    "type": "com.github.{{ headers['x-github-event'] }}",
    "id": "{{ headers['x-github-delivery'] }}",
}


async def test_signed_github_push_is_202_and_on_the_bus_without_credentials(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push signed as GitHub signs it is accepted; the stored event keeps the event and
    delivery headers as extensions, and no signature."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "It's a Secret to Everybody")
    sensor = make_sensor(
        {"preset": "github", "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}]}, event=GITHUB_EVENT
    )
    request = github_push(b"It's a Secret to Everybody")
    assert await sensor.handle(request, emit) == HttpReply(202, {"id": "d-1"})
    [received] = await on_bus(bus, 1)
    assert received.event == Event(
        id="d-1",
        source="/webhooks/hooks",
        type="com.github.push",
        time=NOW,
        datacontenttype="application/json",
        data=json.loads(PUSH),
        extensions={"xgithubevent": "push", "xgithubdelivery": "d-1"},
    )
    stored = received.encode().decode()
    for name in ("x-hub-signature", "x-hub-signature-256"):
        assert request.headers[name].partition("=")[2] not in stored


async def test_bad_github_signature_is_401_logged_and_nothing_is_published(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push signed with another secret is refused with the generic message."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "right")
    sensor = make_sensor({"preset": "github", "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}]})
    with capture_logs() as logs:
        reply = await sensor.handle(github_push(b"wrong"), emit)
    assert reply == HttpReply(401, SIGNATURE_MISMATCH)
    assert logs == [
        {
            "event": "delivery refused",
            "log_level": "warning",
            "sensor": "hooks",
            "detail": "github: header X-Hub-Signature-256 matches no active secret (1 tried)",
        }
    ]
    await assert_nothing_published(bus, emit)


async def test_unsigned_github_push_is_401(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery without the signature header never reaches the bus."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "right")
    sensor = make_sensor({"preset": "github", "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}]})
    assert await sensor.handle(with_headers({}, PUSH), emit) == HttpReply(401, SIGNATURE_MISMATCH)
    await assert_nothing_published(bus, emit)


async def test_signature_covers_the_exact_raw_bytes(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-serialized JSON with the same meaning but other bytes is refused."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "right")
    sensor = make_sensor({"preset": "github", "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}]})
    signed = github_push(b"right")
    compact = json.dumps(json.loads(PUSH), separators=(",", ":")).encode()
    request = HttpRequest("POST", "hooks", signed.headers, {}, compact)
    assert await sensor.handle(request, emit) == HttpReply(401, SIGNATURE_MISMATCH)
    await assert_nothing_published(bus, emit)


async def test_template_cannot_copy_the_signature_into_the_event(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credential headers are dropped before templates run, so referring to one fails."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "right")
    sensor = make_sensor(
        {"preset": "github", "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}]},
        event={"subject": "{{ headers['x-hub-signature-256'] }}"},
    )
    assert await sensor.handle(github_push(b"right"), emit) == HttpReply(
        400,
        {
            "error": "event.subject: the template \"{{ headers['x-hub-signature-256'] }}\""
            " failed on this request: \"headers['x-hub-signature-256']\": no such key:"
            " x-hub-signature-256"
        },
    )
    await assert_nothing_published(bus, emit)


async def test_rotated_secrets_are_both_accepted_and_a_retired_one_is_not(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """During a rotation the new (env) and previous (file) secret both verify."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "new-secret")
    previous = tmp_path / "previous"
    previous.write_bytes(b"old-secret\n")
    sensor = make_sensor(
        {
            "preset": "github",
            "secrets": [{"env": "GITHUB_WEBHOOK_SECRET"}, {"file": str(previous)}],
        },
        event=GITHUB_EVENT,
    )
    assert await sensor.handle(github_push(b"new-secret", "d-new"), emit) == HttpReply(
        202, {"id": "d-new"}
    )
    assert await sensor.handle(github_push(b"old-secret", "d-old"), emit) == HttpReply(
        202, {"id": "d-old"}
    )
    retired = await sensor.handle(github_push(b"retired-secret", "d-retired"), emit)
    assert retired == HttpReply(401, SIGNATURE_MISMATCH)
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 3)] == ["d-new", "d-old", "sentinel"]


async def test_slack_delivery_within_tolerance_is_accepted(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slack event signed 299 s ago passes the default 5 minute window."""
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "8f742231b10e8888abcd99yyyzzz85a5")
    sensor = make_sensor({"preset": "slack", "secrets": [{"env": "SLACK_SIGNING_SECRET"}]})
    request = slack_event(b"8f742231b10e8888abcd99yyyzzz85a5", T - 299)
    assert (await sensor.handle(request, emit)).status == 202
    [received] = await on_bus(bus, 1)
    assert received.event.data == json.loads(SLACK_EVENT)


@pytest.mark.parametrize(
    ("auth", "age", "detail"),
    [
        (
            {},
            301,
            "slack: signed at 1714564499, 301s ago, outside the 300s tolerance"
            " (a replay, or a clock out of sync)",
        ),
        (
            {"toleranceSeconds": 60},
            61,
            "slack: signed at 1714564739, 61s ago, outside the 60s tolerance"
            " (a replay, or a clock out of sync)",
        ),
    ],
    ids=["default-tolerance", "configured-tolerance"],
)
async def test_slack_replay_outside_tolerance_is_401(
    bus: MemoryBus,
    emit: Emit,
    monkeypatch: pytest.MonkeyPatch,
    auth: dict[str, Any],
    age: int,
    detail: str,
) -> None:
    """A captured, correctly signed Slack request sent again too late is refused."""
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "slack-secret")
    sensor = make_sensor({"preset": "slack", "secrets": [{"env": "SLACK_SIGNING_SECRET"}], **auth})
    with capture_logs() as logs:
        reply = await sensor.handle(slack_event(b"slack-secret", T - age), emit)
    assert reply == HttpReply(401, SIGNATURE_MISMATCH)
    assert [entry["detail"] for entry in logs] == [detail]
    await assert_nothing_published(bus, emit)


async def test_stripe_signature_is_checked_with_its_timestamp(
    bus: MemoryBus, emit: Emit, tmp_path: Path
) -> None:
    """Stripe-Signature t=...,v1=... over "<t>.<body>" is accepted; a stale one is not."""
    (tmp_path / "whsec").write_bytes(b"whsec_test\n")
    sensor = make_sensor(
        {"preset": "stripe", "secrets": [{"file": str(tmp_path / "whsec")}]},
        event={"id": "{{ body.id }}", "type": "com.stripe.{{ body.type }}"},
    )
    body = b'{"id": "evt_1", "type": "payment_intent.succeeded"}'

    def stripe(timestamp: int) -> HttpRequest:
        signature = hex_hmac(b"whsec_test", f"{timestamp}.".encode() + body)
        return with_headers({"stripe-signature": f"t={timestamp},v1={signature}"}, body)

    assert await sensor.handle(stripe(T - 10), emit) == HttpReply(202, {"id": "evt_1"})
    assert await sensor.handle(stripe(T - 400), emit) == HttpReply(401, SIGNATURE_MISMATCH)
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 2)] == ["evt_1", "sentinel"]


async def test_generic_hmac_in_a_binary_cloudevent_keeps_the_signature_out(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ce-* signature header is dropped, so it cannot become a CloudEvent extension."""
    monkeypatch.setenv("HOOK_SECRET", "hmac-secret")
    sensor = make_sensor(
        {
            "hmac": {
                "header": "CE-Signature",
                "encoding": "base64",
                "timestampHeader": "X-Timestamp",
                "toleranceSeconds": 60,
                "signedPayload": "{timestamp}.{body}",
            },
            "secrets": [{"env": "HOOK_SECRET"}],
        }
    )
    body = b'{"n": 1}'
    digest = hmac.new(b"hmac-secret", f"{T}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/producer",
        "ce-type": "com.example.thing",
        "ce-traceparent": "00-abc-def-01",
        "ce-signature": base64.b64encode(digest).decode(),
        "x-timestamp": str(T),
    }
    assert await sensor.handle(with_headers(headers, body), emit) == HttpReply(202, {"id": "e-1"})
    [received] = await on_bus(bus, 1)
    assert received.event.extensions == {"traceparent": "00-abc-def-01"}
    assert received.event.data == {"n": 1}


async def test_gitlab_token_is_accepted_and_a_wrong_one_refused(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X-Gitlab-Token equal to the secret passes; another is 401 credentials do not match."""
    monkeypatch.setenv("GITLAB_TOKEN", "gl-token")
    sensor = make_sensor({"preset": "gitlab", "secrets": [{"env": "GITLAB_TOKEN"}]})
    assert (await sensor.handle(with_headers({"x-gitlab-token": "gl-token"}), emit)).status == 202
    wrong = await sensor.handle(with_headers({"x-gitlab-token": "nope"}), emit)
    assert wrong == HttpReply(401, CREDENTIALS_MISMATCH)
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 2)][1] == "sentinel"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"authorization": "Bearer tok-123"}, 202),
        ({"authorization": "bearer tok-123"}, 202),
        ({"authorization": "Bearer tok-124"}, 401),
        ({"authorization": "Basic dG9rLTEyMw=="}, 401),
        ({}, 401),
    ],
    ids=["right", "scheme-case-insensitive", "wrong-token", "wrong-scheme", "missing"],
)
async def test_bearer_token(
    bus: MemoryBus,
    emit: Emit,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    status: int,
) -> None:
    """A bearer endpoint takes its token; every refusal carries the Bearer challenge."""
    monkeypatch.setenv("HOOK_TOKEN", "tok-123")
    sensor = make_sensor({"bearer": {}, "secrets": [{"env": "HOOK_TOKEN"}]})
    reply = await sensor.handle(with_headers(headers), emit)
    if status == 401:
        assert reply == HttpReply(401, CREDENTIALS_MISMATCH, BEARER)
        await assert_nothing_published(bus, emit)
    else:
        assert reply.status == 202
        [received] = await on_bus(bus, 1)
        assert "tok-123" not in received.encode().decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (basic("ci", "ci-pass"), 202),
        (basic("ops", "ops:pass"), 202),
        (basic("ci", "ops:pass"), 401),
        (basic("nobody", "ci-pass"), 401),
        ({"authorization": "Basic not-base64!"}, 401),
        ({}, 401),
    ],
    ids=["ci", "ops-colon-in-password", "crossed", "unknown-user", "malformed", "missing"],
)
async def test_basic_auth(
    bus: MemoryBus,
    emit: Emit,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    headers: dict[str, str],
    status: int,
) -> None:
    """Each user's own password (env or file) passes; anything else gets the Basic challenge."""
    monkeypatch.setenv("CI_PASSWORD", "ci-pass")
    (tmp_path / "ops").write_bytes(b"ops:pass\n")
    sensor = make_sensor(
        {
            "basic": {
                "users": [
                    {"username": "ci", "password": {"env": "CI_PASSWORD"}},
                    {"username": "ops", "password": {"file": str(tmp_path / "ops")}},
                ]
            }
        }
    )
    reply = await sensor.handle(with_headers(headers), emit)
    if status == 401:
        assert reply == HttpReply(401, CREDENTIALS_MISMATCH, BASIC)
        await assert_nothing_published(bus, emit)
    else:
        assert reply.status == 202


async def test_basic_user_whose_password_is_missing_gets_503_others_pass(
    bus: MemoryBus, emit: Emit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One user's unreadable password does not lock out the others, nor open a door."""
    monkeypatch.delenv("CI_PASSWORD", raising=False)
    (tmp_path / "ops").write_bytes(b"ops-pass")
    sensor = make_sensor(
        {
            "basic": {
                "users": [
                    {"username": "ci", "password": {"env": "CI_PASSWORD"}},
                    {"username": "ops", "password": {"file": str(tmp_path / "ops")}},
                ]
            }
        }
    )
    assert (await sensor.handle(with_headers(basic("ops", "ops-pass")), emit)).status == 202
    unavailable = await sensor.handle(with_headers(basic("ci", "")), emit)
    assert unavailable.status == 503
    await emit(SENTINEL)
    assert [received.id for received in await on_bus(bus, 2)][1] == "sentinel"


async def test_unauthenticated_endpoint_still_keeps_authorization_out(
    bus: MemoryBus, emit: Emit
) -> None:
    """Without auth, an Authorization header is still not visible to templates."""
    sensor = make_sensor(None, event={"subject": "{{ headers['authorization'] }}"})
    reply = await sensor.handle(with_headers({"Authorization": "Bearer x"}), emit)
    assert reply == HttpReply(
        400,
        {
            "error": "event.subject: the template \"{{ headers['authorization'] }}\" failed on"
            " this request: \"headers['authorization']\": no such key: authorization"
        },
    )
    await assert_nothing_published(bus, emit)
