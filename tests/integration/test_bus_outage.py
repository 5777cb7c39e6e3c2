"""The service with its bus broker down: it starts, says why it is not ready, refuses webhooks
with 503 + Retry-After, and catches up once the broker is there (issue 4).

Each test owns its broker (tests/brokers.py) on a free port; the source a stream sensor reads
is the machine's shared NATS at 127.0.0.1:4222, which stays up: it holds the events meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from eventflow.settings import BusSettings
from tests.brokers import own_nats, own_tansu, running, write_stream_resources
from tests.conftest import RunningServer, free_port
from tests.contract.conftest import NATS_URL, nats_connection

IDLE_SENSOR = f"nats: {{url: {NATS_URL}, subjects: [idle.{uuid.uuid4().hex}]}}"
"""A stream sensor that hears nothing: tests that only need the webhook sensor `hooks`."""


@pytest.fixture
async def source() -> AsyncIterator[tuple[Client, str]]:
    """A JetStream stream of its own on the shared server: (client, stream name)."""
    client = await nats_connection()
    stream = f"SRC_{uuid.uuid4().hex[:12]}"
    await client.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    try:
        yield client, stream
    finally:
        await client.jetstream().delete_stream(stream)
        await client.close()


def nats_sensor_resources(directory: Path, stream: str) -> Path:
    return write_stream_resources(
        directory,
        f"""
        nats:
          url: {NATS_URL}
          jetstream: {{stream: {stream}, consumer: eventflow}}
        """,
    )


async def readiness(server: RunningServer) -> tuple[int, dict[str, Any]]:
    response = await server.client.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def wait_ready(server: RunningServer, status: int, timeout: float = 20.0) -> dict[str, Any]:
    """Poll /readyz until it answers `status`; return the body."""
    async with asyncio.timeout(timeout):
        while True:
            code, body = await readiness(server)
            if code == status:
                return body
            await asyncio.sleep(0.05)


async def assert_refusing(server: RunningServer, url: str) -> dict[str, Any]:
    """/readyz 503 naming the bus, a webhook 503 + Retry-After, nothing stored; the body."""
    code, body = await readiness(server)
    assert code == 503
    assert body["error"].startswith(f"not ready: bus {url} unreachable: ")
    hook = await server.client.post("/webhooks/hooks", json={"x": 1})
    assert (hook.status_code, hook.headers["retry-after"]) == (503, "1")
    assert "send the event again" in hook.json()["error"]
    assert await server.stored_events() == []
    return body


async def test_nats_down_at_start_serves_503_then_catches_up_with_one_run(
    server_factory: Any, tmp_path: Path, source: tuple[Client, str]
) -> None:
    """NATS bus down: /readyz 503 naming it, webhook 503 + Retry-After, nothing stored;
    once up, the event the source held produces exactly one run."""
    client, stream = source
    await client.jetstream().publish(f"{stream}.new", b'{"order": 1}')
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    bus = BusSettings(url=url, stream=f"T_{uuid.uuid4().hex[:8]}", subject_prefix="t.events")
    resources = nats_sensor_resources(tmp_path / "resources", stream)
    broker = own_nats(port, tmp_path / "jetstream")
    with running(broker, started=False):
        async with server_factory(resources, bus=bus) as server:
            body = await assert_refusing(server, url)
            assert body["sensors"] == [
                {"name": "hooks", "connected": None},
                {"name": "orders", "connected": False},
            ]

            broker.start()
            ready = await wait_ready(server, 200)
            assert ready["status"] == "ready"
            [run] = await server.wait_runs(1)
            await server.wait_run(run["id"])
            info = await client.jetstream().consumer_info(stream, "eventflow")
            assert (info.num_pending, info.num_ack_pending) == (0, 0)
            assert len((await server.client.get("/api/v1/runs")).json()["runs"]) == 1
            assert (await readiness(server))[1]["sensors"][1] == {
                "name": "orders",
                "connected": True,
            }


async def test_nats_going_away_flips_readiness_and_back(
    server_factory: Any, tmp_path: Path
) -> None:
    """A running service reports 503 while its NATS is killed, 200 once it is back, and then
    takes webhook events again."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    bus = BusSettings(url=url, stream="EVENTS", subject_prefix="t.events")
    resources = write_stream_resources(tmp_path / "resources", IDLE_SENSOR)
    broker = own_nats(port, tmp_path / "jetstream")
    with running(broker):
        async with server_factory(resources, bus=bus) as server:
            await wait_ready(server, 200)
            broker.kill()
            await wait_ready(server, 503)
            body = await assert_refusing(server, url)
            assert body["error"].endswith(f"{url} unreachable: connection lost, reconnecting")
            broker.start()
            await wait_ready(server, 200)
            accepted = await server.client.post("/webhooks/hooks", json={"x": 2})
            assert accepted.status_code == 202


async def test_kafka_down_at_start_becomes_ready_when_the_broker_starts(
    server_factory: Any, tmp_path: Path
) -> None:
    """Kafka bus down: /readyz 503 naming it, webhook 503; once tansu listens, ready and a
    webhook event is taken."""
    port = free_port()
    url = f"kafka://127.0.0.1:{port}"
    bus = BusSettings(url=url, topic="events", idempotent=False)
    resources = write_stream_resources(tmp_path / "resources", IDLE_SENSOR)
    broker = own_tansu(port)
    with running(broker, started=False):
        async with server_factory(resources, bus=bus) as server:
            await assert_refusing(server, url)
            broker.start()
            await wait_ready(server, 200, timeout=40.0)
            accepted = await server.client.post("/webhooks/hooks", json={"x": 2})
            assert accepted.status_code == 202
