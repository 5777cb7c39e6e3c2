"""Two replicas of the engine on one bus and one PostgreSQL database: each event is handled
once (exactly N runs) and both replicas take a share of the work (issue 4).

The replicas are two `Service`s in this process, each with its own data dir (step logs) and
one PostgreSQL schema of the test's own; the bus is a JetStream stream on a nats-server of the
test's own (eventflow's dead-letter subject is fixed, so streams of two tests on one server
clash) or a topic of its own on the session's tansu.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventflow.bus.nats import NatsBus
from eventflow.bus.protocol import EventBus
from eventflow.events import Event, ReceivedEvent
from eventflow.service import Service
from eventflow.settings import BusSettings, Settings, StoreSettings
from eventflow.store.records import RunRecord
from tests.brokers import own_nats, running, write_stream_resources
from tests.conftest import free_port
from tests.kafka_broker import (
    Broker,
    isolated_kafka_bus,
    kafka_broker_fixture,  # noqa: F401  # registers the `kafka_broker` fixture
    unique_name,
)

pytestmark = pytest.mark.timeout(120)

EVENTS = 200
SLOW_ACK = 30.0  # a loaded CI machine may take seconds to ack: a slow ack is no failure here
PREFIX = "replicas.events"


@contextlib.asynccontextmanager
async def replica(
    data_dir: Path, resources: Path, bus: BusSettings, store_url: str
) -> AsyncIterator[tuple[Service, list[str]]]:
    """A started Service and the ids of the runs its dispatcher created, in order."""
    settings = Settings(
        data_dir=data_dir, bus=bus, store=StoreSettings(url=store_url), shutdown_grace_seconds=1
    )
    service = Service(settings, [resources])
    await service.start()
    created: list[str] = []
    admit = service.runs.admit

    def counting_admit(run: RunRecord) -> None:
        created.append(run.id)
        admit(run)

    service.runs.admit = counting_admit  # type: ignore[method-assign]
    try:
        yield service, created
    finally:
        await service.stop()


def order(number: int) -> ReceivedEvent:
    # A subject per order: Kafka keys by subject, so the orders spread over the partitions.
    event = Event(
        id=f"order-{number}", source="/shop", type="com.example.order", subject=f"o-{number}"
    )
    return ReceivedEvent(event, "orders", datetime.now(UTC))


@contextlib.asynccontextmanager
async def shared_bus(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[BusSettings, EventBus]]:
    """Bus settings for the replicas and a started bus to publish on, on the same stream or
    topic: NATS on a server of the test's own, Kafka on the session's tansu."""
    if kind == "nats":
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        with running(own_nats(port, tmp_path / "jetstream")):
            publisher = NatsBus(
                url, stream="EVENTS", subject_prefix=PREFIX, publish_timeout_seconds=SLOW_ACK
            )
            await publisher.start()
            try:
                yield BusSettings(url=url, stream="EVENTS", subject_prefix=PREFIX), publisher
            finally:
                await publisher.close()
        return
    broker: Broker = request.getfixturevalue("kafka_broker")
    topic = unique_name("replicas")
    settings = BusSettings(url=f"kafka://{broker.bootstrap}", topic=topic, idempotent=False)
    async with isolated_kafka_bus(
        broker, topic=topic, partitions=6, publish_timeout_seconds=SLOW_ACK
    ) as kafka_publisher:
        yield settings, kafka_publisher


@pytest.mark.parametrize("kind", ["nats", "kafka"])
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_two_replicas_share_the_work_and_handle_each_event_once(
    tmp_path: Path, store_url: str, kind: str, request: pytest.FixtureRequest
) -> None:
    """200 and more events, each sent twice, to two engine replicas on one JetStream consumer
    or Kafka group and one database: one run per event, created by both replicas."""
    idle = "nats: {url: nats://127.0.0.1:1, subjects: [idle.none]}"
    resources = write_stream_resources(tmp_path / "resources", idle)
    async with (
        shared_bus(kind, tmp_path, request) as (bus, publisher),
        replica(tmp_path / "a", resources, bus, store_url) as (first, by_first),
        replica(tmp_path / "b", resources, bus, store_url) as (_, by_second),
    ):
        published = 0

        async def publish_and_wait(count: int, *, again: bool = False) -> None:
            """Publish `count` new orders (after a resend of all so far, if `again`) and wait
            until each order has a run: a partition's resends come before its new orders."""
            nonlocal published
            numbers = range(published) if again else range(0)
            for number in [*numbers, *range(published, published + count)]:
                await publisher.publish(order(number))
            published += count
            async with asyncio.timeout(30):
                while len(by_first) + len(by_second) < published:
                    await asyncio.sleep(0.05)

        await publish_and_wait(EVENTS)
        # A Kafka group may still have been forming: more orders until both replicas took some.
        async with asyncio.timeout(40):
            while not (by_first and by_second):
                await publish_and_wait(20)
        await publish_and_wait(60, again=True)
        assert sum((await first.store.count_runs()).values()) == published
        assert len(by_first) + len(by_second) == published
        stored = {run.event_id for run in await first.store.list_runs(limit=1000)}
        assert stored == {f"order-{n}" for n in range(published)}
