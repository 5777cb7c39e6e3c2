"""Fixtures for the EventBus contract: one `bus` per implementation, and pumps that read it.

The NATS bus uses the machine's server at 127.0.0.1:4222; each test gets its own stream and
subject prefix (deleted afterwards), so tests run in parallel under pytest-xdist.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from eventflow.bus.memory import MemoryBus
from eventflow.bus.nats import NatsBus
from eventflow.bus.protocol import Delivery, EventBus
from eventflow.events import Event, ReceivedEvent
from tests.kafka_broker import Broker, isolated_kafka_bus, kafka_broker_fixture  # noqa: F401

NATS_URL = "nats://127.0.0.1:4222"
START_NATS = (
    f"NATS with JetStream does not answer at {NATS_URL}: run .ci/run, or start it with"
    " `nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats-store &`"
)
RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_event(number: int, sensor: str = "orders", subject: str | None = None) -> ReceivedEvent:
    """An event using every CloudEvents attribute, so a round trip shows any field lost."""
    return ReceivedEvent(
        event=Event(
            id=f"evt-{number}",
            source="/tests/contract",
            type="com.example.order.created",
            subject=subject or f"order-{number}",
            time=datetime(2024, 5, 6, 7, 8, 0, tzinfo=UTC),
            datacontenttype="application/json",
            dataschema="https://example.com/order.json",
            data={"number": number, "note": "ünïcode ✓", "items": [1, 2.5, None, True]},
            extensions={"traceparent": "00-abc-def-01", "priority": 3, "urgent": False},
        ),
        sensor=sensor,
        received_at=RECEIVED_AT,
    )


async def nats_connection() -> Client:
    """A plain client to the shared server; fails the test with how to start it."""
    client = Client()
    try:
        await client.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    except (OSError, TimeoutError, NatsError) as error:
        await client.close()
        pytest.fail(f"{START_NATS} ({error!r})")
    return client


@contextlib.asynccontextmanager
async def isolated_nats_bus(**settings: Any) -> AsyncIterator[NatsBus]:
    """A started NatsBus on streams of its own, deleted on exit."""
    settings.setdefault("ack_wait_seconds", 1.0)
    client = await nats_connection()
    tag = uuid.uuid4().hex[:12]
    stream = f"TEST_{tag}"
    bus = NatsBus(
        NATS_URL,
        stream=stream,
        subject_prefix=f"test.{tag}.events",
        dead_letter_subject=f"test.{tag}.dead",
        **settings,
    )
    try:
        await bus.start()
        yield bus
    finally:
        await bus.close()
        jetstream = client.jetstream()
        for name in (stream, f"{stream}_DLQ"):
            with contextlib.suppress(NotFoundError):
                await jetstream.delete_stream(name)
        await client.close()


@pytest.fixture(params=["memory", "nats", "kafka"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """Each EventBus implementation, started, closed after the test."""
    if request.param == "memory":
        memory = MemoryBus()
        await memory.start()
        yield memory
        await memory.close()
        return
    if request.param == "kafka":
        broker: Broker = request.getfixturevalue("kafka_broker")
        async with isolated_kafka_bus(broker) as kafka_bus:
            yield kafka_bus
        return
    async with isolated_nats_bus() as nats_bus:
        yield nats_bus


class Pump:
    """One subscription read in the background into `inbox`, as the engine's receiver does.

    Pumps may share an inbox: each item says which pump received the delivery.
    """

    def __init__(
        self, bus: EventBus, group: str, name: str, inbox: asyncio.Queue[tuple[str, Delivery]]
    ) -> None:
        self.name = name
        self.inbox = inbox
        self._iterator = bus.subscribe(group)
        self._task = asyncio.create_task(self._run(), name=f"pump-{name}")

    async def _run(self) -> None:
        async for delivery in self._iterator:
            await self.inbox.put((self.name, delivery))

    async def next(self, timeout: float = 5.0) -> Delivery:
        return (await self.next_with_name(timeout))[1]

    async def next_with_name(self, timeout: float = 5.0) -> tuple[str, Delivery]:
        try:
            async with asyncio.timeout(timeout):
                return await self.inbox.get()
        except TimeoutError:
            if self._task.done():
                self._task.result()
            raise

    async def take(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            return [await self.next(timeout) for _ in range(count)]

    async def silent_for(self, seconds: float) -> bool:
        """True if nothing arrives within `seconds`."""
        try:
            await self.next(seconds)
        except TimeoutError:
            return True
        return False

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


PumpFactory = Callable[..., Awaitable[Pump]]


@pytest.fixture
async def subscribe(bus: EventBus) -> AsyncIterator[PumpFactory]:
    """`await subscribe(group)` starts a Pump on `bus`; every pump stops after the test."""
    async with pumps_on(bus) as start:
        yield start


@contextlib.asynccontextmanager
async def pumps_on(bus: EventBus) -> AsyncIterator[PumpFactory]:
    pumps: list[Pump] = []

    async def start(
        group: str, name: str = "", inbox: asyncio.Queue[tuple[str, Delivery]] | None = None
    ) -> Pump:
        pump = Pump(bus, group, name or group, inbox if inbox is not None else asyncio.Queue())
        pumps.append(pump)
        # One turn of the loop lets the subscription register its group before a publish.
        await asyncio.sleep(0)
        return pump

    try:
        yield start
    finally:
        for pump in pumps:
            await pump.stop()
