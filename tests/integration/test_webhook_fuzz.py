"""Random bytes and headers against the whole webhook sensor (signature checks, body parsing,
dedupe) on the real intake and in-memory bus: every answer is a 2xx or a 4xx, never a 5xx,
and no exception escapes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventflow.bus.memory import MemoryBus
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import HttpRequest
from sensors.webhook import WebhookSensor
from sensors.webhook.config import WebhookConfig

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "application/json; charset=nope",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-16",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "text/plain",
    "",
]
HEADER_NAMES = [
    "content-type",
    "x-hub-signature-256",
    "x-github-delivery",
    "x-github-event",
    "x-gitlab-token",
    "x-gitlab-event-uuid",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "authorization",
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "x-sig",
    "x-ts",
]
# Header values as the listener makes them: any byte, decoded as latin-1.
header_value = st.binary(max_size=40).map(lambda raw: raw.decode("latin-1"))
header_values = st.one_of(
    header_value,
    st.sampled_from(["1.0", "sha256=00", "v0=ab", "t=1,v1=00", "Bearer x", "Basic eDp5"]),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"{}", b"[]", b'{"id": "evt_1"}', b"payload=%7B%7D", b"a=1&a=2", b"a=%ff"]),
    st.text(max_size=80).map(str.encode),
)


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "secret"
    path.write_text("s3cret")
    return path


def auths(secret: Path) -> list[dict[str, Any] | None]:
    secrets = [{"file": str(secret)}]
    return [
        None,
        {"preset": "github", "secrets": secrets},
        {"preset": "gitlab", "secrets": secrets},
        {"preset": "stripe", "secrets": secrets},
        {"preset": "slack", "secrets": secrets},
        {
            "hmac": {
                "header": "x-sig",
                "encoding": "base64",
                "timestampHeader": "x-ts",
                "toleranceSeconds": 60,
                "signedPayload": "{timestamp}.{body}",
            },
            "secrets": secrets,
        },
        {"bearer": {}, "secrets": secrets},
        {"basic": {"users": [{"username": "x", "password": {"file": str(secret)}}]}},
    ]


async def answer(config: WebhookConfig, request: HttpRequest) -> int:
    bus = MemoryBus()
    await bus.start()
    try:
        reply = await WebhookSensor("fuzz", config).handle(
            request, make_emit("fuzz", bus, lambda: datetime.now(UTC))
        )
    finally:
        await bus.close()
    return reply.status


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    auth_index=st.integers(0, 7),
    content_type=st.sampled_from(CONTENT_TYPES) | header_value,
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=6),
    body=bodies,
    keyed=st.booleans(),
)
def test_random_requests_get_a_2xx_or_4xx_and_raise_nothing(
    secret_file: Path,
    auth_index: int,
    content_type: str,
    headers: dict[str, str],
    body: bytes,
    keyed: bool,
) -> None:
    """Whatever the bytes, headers and auth scheme: an answer below 500, no exception."""
    spec: dict[str, Any] = {"path": "fuzz", "auth": auths(secret_file)[auth_index]}
    if keyed:
        spec["dedupe"] = {"deliveryId": "{{ headers['x-github-delivery'] }}"}
    config = WebhookConfig.model_validate(spec)
    request = HttpRequest("POST", "fuzz", {"content-type": content_type, **headers}, {}, body)
    status = asyncio.run(answer(config, request))
    assert status in {200, 202, 400, 401, 415}
