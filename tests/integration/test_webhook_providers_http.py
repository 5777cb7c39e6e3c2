"""Real provider deliveries over real HTTP: eventflow behind uvicorn on 127.0.0.1, payloads
signed as GitHub, GitLab, Stripe and Slack sign them, CloudEvents sent by the `cloudevents`
SDK. Each accepted delivery is in the store once; each refused one leaves nothing behind,
checked by a sentinel delivery stored after it with nothing in between."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from tests.conftest import FIXTURES, RunningServer

GITHUB_SECRET = "It's a Secret to Everybody"
OLD_SECRET = "the-secret-being-retired"
GITLAB_TOKEN = "gitlab-hook-token"
STRIPE_SECRET = "whsec_test_7a0f8c3e5b"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()
PULL_REQUEST = (FIXTURES / "github" / "pull_request--opened.payload.json").read_bytes()
GITLAB_PUSH = (FIXTURES / "gitlab" / "push--payload.json").read_bytes()
STRIPE_EVENT = (FIXTURES / "stripe" / "payment_intent.succeeded.json").read_bytes()
SLASH_COMMAND = (FIXTURES / "slack" / "slash-command.form").read_bytes()
JSON = "application/json"

RESOURCES = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: github}
spec:
  webhook:
    path: github
    maxBodyBytes: 200000
    auth: {preset: github, secrets: [{env: GITHUB_SECRET}, {env: OLD_GITHUB_SECRET}]}
    event:
      type: "com.github.{{ headers['x-github-event'] }}"
      source: https://github.com
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: gitlab}
spec:
  webhook:
    path: gitlab
    auth: {preset: gitlab, secrets: [{env: GITLAB_TOKEN}]}
    event: {type: "com.gitlab.{{ body.object_kind }}"}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: stripe}
spec:
  webhook:
    path: stripe
    auth: {preset: stripe, secrets: [{env: STRIPE_SECRET}]}
    event: {type: "com.stripe.{{ body.type }}"}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: slack}
spec:
  webhook:
    path: slack
    auth: {preset: slack, secrets: [{env: SLACK_SECRET}]}
    event: {type: com.slack.command, subject: "{{ body.command }}"}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: events}
spec:
  webhook: {path: events, maxBodyBytes: 64}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: limited}
spec:
  webhook: {path: limited, rateLimit: {perSecond: 0.001, burst: 1}}
---
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: sentinel}
spec:
  webhook: {path: sentinel}
"""

Factory = Callable[..., Any]


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GITHUB_SECRET", GITHUB_SECRET)
    monkeypatch.setenv("OLD_GITHUB_SECRET", OLD_SECRET)
    monkeypatch.setenv("GITLAB_TOKEN", GITLAB_TOKEN)
    monkeypatch.setenv("STRIPE_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("SLACK_SECRET", SLACK_SECRET)
    directory = tmp_path / "resources"
    directory.mkdir()
    (directory / "sensors.yaml").write_text(RESOURCES)
    return directory


@pytest.fixture
async def server(server_factory: Factory, resources: Path) -> AsyncIterator[RunningServer]:
    async with server_factory(resources) as running:
        yield running


def hex_hmac(secret: str, payload: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret.encode(), payload, digest).hexdigest()


def github_headers(
    event: str, delivery: str, body: bytes, secret: str = GITHUB_SECRET
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/044aadd",
        "x-github-event": event,
        "x-github-delivery": delivery,
        "x-github-hook-id": "292430182",
        "x-hub-signature": f"sha1={hex_hmac(secret, body, 'sha1')}",
        "x-hub-signature-256": f"sha256={hex_hmac(secret, body)}",
    }


def stripe_headers(body: bytes, signed_at: int) -> dict[str, str]:
    signature = hex_hmac(STRIPE_SECRET, f"{signed_at}.".encode() + body)
    return {
        "content-type": "application/json; charset=utf-8",
        "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "stripe-signature": f"t={signed_at},v1={signature}",
    }


def slack_headers(body: bytes, signed_at: int) -> dict[str, str]:
    signature = hex_hmac(SLACK_SECRET, f"v0:{signed_at}:".encode() + body)
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": str(signed_at),
        "x-slack-signature": f"v0={signature}",
    }


async def stored(server: RunningServer, event_id: str) -> dict[str, Any]:
    """The stored CloudEvent once the engine has recorded it."""
    async with asyncio.timeout(10):
        while (record := await server.service.store.get_event(event_id)) is None:
            await asyncio.sleep(0.01)
    return record.document


async def assert_stored_only(server: RunningServer, *ids: str) -> None:
    """A sentinel sent now is stored, and before it exactly `ids`: nothing else was kept."""
    reply = await server.client.post("/webhooks/sentinel", json={"sentinel": True})
    assert reply.status_code == 202
    sentinel = reply.json()["id"]
    await stored(server, sentinel)
    assert sorted(await server.stored_events()) == sorted([*ids, sentinel])


@pytest.mark.parametrize(
    ("event", "body"), [("push", PUSH), ("pull_request", PULL_REQUEST)], ids=["push", "pr"]
)
async def test_signed_github_delivery_is_stored_with_its_headers_and_no_signature(
    server: RunningServer, event: str, body: bytes
) -> None:
    """202 with the delivery id; the stored event keeps event/delivery/hook headers only."""
    delivery = f"72d3162e-cc78-11e3-81ab-4c9367dc0958-{event}"
    reply = await server.client.post(
        "/webhooks/github", content=body, headers=github_headers(event, delivery, body)
    )
    assert (reply.status_code, reply.json()) == (202, {"id": delivery})
    document = await stored(server, delivery)
    assert document["type"] == f"com.github.{event}"
    assert document["data"] == json.loads(body)
    assert (document["xgithubevent"], document["xgithubdelivery"]) == (event, delivery)
    assert document["xgithubhookid"] == "292430182"
    text = json.dumps(document)
    assert hex_hmac(GITHUB_SECRET, body) not in text
    assert "Hookshot" not in text


async def test_github_redelivery_is_200_with_the_original_id_and_stored_once(
    server: RunningServer,
) -> None:
    """The same X-GitHub-Delivery again: 2xx so GitHub stops, duplicate flagged, nothing new."""
    headers = github_headers("push", "d-redelivered", PUSH)
    first = await server.client.post("/webhooks/github", content=PUSH, headers=headers)
    again = await server.client.post("/webhooks/github", content=PUSH, headers=headers)
    assert (first.status_code, first.json()) == (202, {"id": "d-redelivered"})
    assert (again.status_code, again.json()) == (200, {"id": "d-redelivered", "duplicate": True})
    await assert_stored_only(server, "d-redelivered")


async def test_rotated_github_secret_old_and_new_both_accepted_a_third_refused(
    server: RunningServer,
) -> None:
    """During the overlap either secret signs; any other is 401 and stores nothing."""
    for delivery, secret in [("d-new", GITHUB_SECRET), ("d-old", OLD_SECRET)]:
        headers = github_headers("push", delivery, PUSH, secret)
        reply = await server.client.post("/webhooks/github", content=PUSH, headers=headers)
        assert reply.status_code == 202
    wrong = github_headers("push", "d-wrong", PUSH, "a-secret-never-configured")
    reply = await server.client.post("/webhooks/github", content=PUSH, headers=wrong)
    assert (reply.status_code, reply.json()) == (401, {"error": "signature does not match"})
    await assert_stored_only(server, "d-new", "d-old")


async def test_gitlab_push_with_its_token_is_stored_keyed_by_the_event_uuid(
    server: RunningServer,
) -> None:
    """X-Gitlab-Token checked; X-Gitlab-Event-UUID is the event id and dedupes a retry."""
    headers = {
        "content-type": "application/json",
        "x-gitlab-event": "Push Hook",
        "x-gitlab-event-uuid": "8a5cf1b4-62a4-4b61-bd4b-4f5d1c0a9f11",
        "x-gitlab-instance": "https://gitlab.example.com",
        "x-gitlab-token": GITLAB_TOKEN,
    }
    reply = await server.client.post("/webhooks/gitlab", content=GITLAB_PUSH, headers=headers)
    assert reply.json() == {"id": "8a5cf1b4-62a4-4b61-bd4b-4f5d1c0a9f11"}
    document = await stored(server, reply.json()["id"])
    assert document["type"] == "com.gitlab.push"
    assert document["xgitlabevent"] == "Push Hook"
    assert GITLAB_TOKEN not in json.dumps(document)
    retry = await server.client.post("/webhooks/gitlab", content=GITLAB_PUSH, headers=headers)
    assert retry.status_code == 200
    wrong = {**headers, "x-gitlab-token": "guess", "x-gitlab-event-uuid": "other"}
    refused = await server.client.post("/webhooks/gitlab", content=GITLAB_PUSH, headers=wrong)
    assert (refused.status_code, refused.json()) == (401, {"error": "credentials do not match"})
    await assert_stored_only(server, "8a5cf1b4-62a4-4b61-bd4b-4f5d1c0a9f11")


async def test_stripe_event_signed_now_is_stored_and_a_replay_outside_tolerance_is_401(
    server: RunningServer,
) -> None:
    """Signed now: 202 with the evt_ id; the same bytes signed 301 s ago: refused."""
    now = int(time.time())
    reply = await server.client.post(
        "/webhooks/stripe", content=STRIPE_EVENT, headers=stripe_headers(STRIPE_EVENT, now)
    )
    assert (reply.status_code, reply.json()) == (202, {"id": "evt_3OqB8XLkdIwHu7ix1WmZ2fCc"})
    document = await stored(server, "evt_3OqB8XLkdIwHu7ix1WmZ2fCc")
    assert document["type"] == "com.stripe.payment_intent.succeeded"
    assert document["data"]["data"]["object"]["amount"] == 2000
    other = STRIPE_EVENT.replace(b"evt_3OqB8XLkdIwHu7ix1WmZ2fCc", b"evt_replayed")
    replay = await server.client.post(
        "/webhooks/stripe", content=other, headers=stripe_headers(other, now - 301)
    )
    assert (replay.status_code, replay.json()) == (401, {"error": "signature does not match"})
    await assert_stored_only(server, "evt_3OqB8XLkdIwHu7ix1WmZ2fCc")


async def test_slack_slash_command_form_is_stored_as_fields_and_an_old_one_refused(
    server: RunningServer,
) -> None:
    """The form's fields are the data; a capture replayed 6 minutes later is 401."""
    now = int(time.time())
    reply = await server.client.post(
        "/webhooks/slack", content=SLASH_COMMAND, headers=slack_headers(SLASH_COMMAND, now)
    )
    assert reply.status_code == 202
    document = await stored(server, reply.json()["id"])
    assert document["subject"] == "/weather"
    assert document["data"]["text"] == "94070"
    assert document["data"]["response_url"] == "https://hooks.slack.com/commands/1234/5678"
    replay = await server.client.post(
        "/webhooks/slack", content=SLASH_COMMAND, headers=slack_headers(SLASH_COMMAND, now - 360)
    )
    assert replay.status_code == 401
    await assert_stored_only(server, reply.json()["id"])


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_cloudevents_sdk_event_is_stored_as_sent_and_a_resend_is_a_duplicate(
    server: RunningServer, mode: str
) -> None:
    """The SDK's own encoding in both modes; the same source and id again: 200, not stored."""
    attributes = {
        "type": "com.example.order.created",
        "source": "/orders",
        "id": f"order-1042-{mode}",
        "subject": "1042",
        "datacontenttype": "application/json",
    }
    event = CloudEvent(attributes, {"order": 1042, "total": 20.0})
    message = to_binary_event(event) if mode == "binary" else to_structured_event(event)
    headers, body = message.headers, message.body
    reply = await server.client.post("/webhooks/sentinel", content=body, headers=headers)
    assert (reply.status_code, reply.json()) == (202, {"id": f"order-1042-{mode}"})
    document = await stored(server, f"order-1042-{mode}")
    assert (document["source"], document["subject"]) == ("/orders", "1042")
    assert document["data"] == {"order": 1042, "total": 20.0}
    again = await server.client.post("/webhooks/sentinel", content=body, headers=headers)
    assert (again.status_code, again.json()) == (
        200,
        {"id": f"order-1042-{mode}", "duplicate": True},
    )
    await assert_stored_only(server, f"order-1042-{mode}")


async def test_every_refusal_status_over_http_stores_nothing(server: RunningServer) -> None:
    """404, 405 with Allow, 413, 415, 400, 401, 429 with Retry-After, 431: none stored."""
    client = server.client
    answers = [
        await client.post("/webhooks/nowhere", json={}),
        await client.put("/webhooks/events", json={}),
        await client.post("/webhooks/events", content=b"{" + b" " * 100 + b"}"),
        await client.post("/webhooks/events", content=b"x", headers={"content-type": "text/x"}),
        await client.post("/webhooks/github", content=PUSH, headers={"x-github-event": "push"}),
        await client.post("/webhooks/events", content=b"{", headers={"content-type": JSON}),
        await client.post("/webhooks/events", json={"ok": 1}, headers={"x-big": "a" * 20_000}),
    ]
    assert [answer.status_code for answer in answers] == [404, 405, 413, 415, 401, 400, 431]
    assert answers[1].headers["allow"] == "POST"
    first = await client.post("/webhooks/limited", json={"n": 1})
    limited = await client.post("/webhooks/limited", json={"n": 2})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "1000")
    assert limited.json() == {
        "error": "more than 0.001 deliveries per second (burst 1) on /webhooks/limited;"
        " send again after the Retry-After seconds"
    }
    await assert_stored_only(server, first.json()["id"])


async def test_redelivery_is_deduplicated_across_a_restart_on_sqlite(
    server_factory: Factory, resources: Path, tmp_path: Path
) -> None:
    """The seen delivery ids are in the store: a retry after a restart is still a duplicate."""
    headers = github_headers("push", "d-across-restart", PUSH)
    data_dir = tmp_path / "kept"
    async with server_factory(resources, data_dir=data_dir) as first:
        reply = await first.client.post("/webhooks/github", content=PUSH, headers=headers)
        assert reply.status_code == 202
        await stored(first, "d-across-restart")
    async with server_factory(resources, data_dir=data_dir) as second:
        again = await second.client.post("/webhooks/github", content=PUSH, headers=headers)
        assert (again.status_code, again.json()) == (
            200,
            {"id": "d-across-restart", "duplicate": True},
        )
        await assert_stored_only(second, "d-across-restart")


async def send_partial(url: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request whose headers promise 100 bytes of body and which sends 11, valid JSON."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        'content-length: 100\r\n\r\n{"slow": 1}'.encode()
    )
    await writer.drain()
    return reader, writer


def set_limits(server: RunningServer, **limits: Any) -> None:
    """Change the listener's api.* limits of a running server; the next request obeys them."""
    settings = server.service.settings
    api = settings.api.model_copy(update=limits)
    server.service.settings = settings.model_copy(update={"api": api})


async def until_status(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """Probe a path that stores nothing until the listener answers `status`."""
    async with asyncio.timeout(5):
        while (probe := await client.post("/webhooks/nowhere", json={})).status_code != status:
            await asyncio.sleep(0.01)
    return probe


async def test_a_slow_body_is_408_and_nothing_is_stored(server: RunningServer) -> None:
    """request_timeout_seconds bounds the time a body takes to arrive."""
    set_limits(server, request_timeout_seconds=0.3)
    reader, writer = await send_partial(server.url, "/webhooks/sentinel")
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 408 ")
    writer.close()
    await assert_stored_only(server)


async def test_a_sender_that_hangs_up_mid_body_publishes_nothing(server: RunningServer) -> None:
    """A body cut short by a disconnect is not parsed, though `{"slow": 1}` is valid JSON."""
    _, writer = await send_partial(server.url, "/webhooks/sentinel")
    writer.close()
    await writer.wait_closed()
    await assert_stored_only(server)


async def test_requests_over_the_concurrency_limit_are_503_with_retry_after(
    server: RunningServer,
) -> None:
    """max_concurrent_requests 1 and a slow sender holding it: the next request is 503."""
    set_limits(server, max_concurrent_requests=1)
    _, writer = await send_partial(server.url, "/webhooks/sentinel")
    busy = await until_status(server.client, 503)
    assert busy.headers["retry-after"] == "1"
    assert busy.json() == {
        "error": "1 webhook requests are in progress, the api.max_concurrent_requests limit;"
        " send the delivery again"
    }
    writer.close()
    await until_status(server.client, 404)
    await assert_stored_only(server)
