"""The NATS sensor on the machine's real nats-server, feeding a real MemoryBus via make_emit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from eventflow.bus.memory import MemoryBus
from eventflow.errors import BusUnavailableError
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit
from sensors.nats import NatsConfig, NatsSensor
from sensors.nats.sensor import REASON_HEADER, SUBJECT_HEADER
from tests.contract.conftest import NATS_URL, nats_connection

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


class Rig:
    """A tag of its own on the shared server, a client, a bus and the sensors under test."""

    def __init__(self, client: Client, bus: MemoryBus) -> None:
        self.client = client
        self.bus = bus
        self.tag = uuid.uuid4().hex[:12]
        self.stream = f"SENSOR_{self.tag}"
        self.prefix = f"sensortest.{self.tag}"
        self.inbox: asyncio.Queue[ReceivedEvent] = asyncio.Queue()
        self._pump = asyncio.create_task(self._read(), name="pump")
        self._tasks: list[asyncio.Task[None]] = []

    async def _read(self) -> None:
        # A timeout on the generator itself would close it: a task reads it instead.
        async for delivery in self.bus.subscribe("engine"):
            await delivery.ack()
            await self.inbox.put(delivery.event)

    def start(self, spec: dict[str, Any], emit: Callable[[Emit], Emit] | None = None) -> NatsSensor:
        sensor = NatsSensor("orders", NatsConfig.model_validate({"url": NATS_URL, **spec}))
        real = make_emit(sensor.name, self.bus, lambda: NOW)
        task = asyncio.create_task(sensor.run(emit(real) if emit else real), name="sensor")
        self._tasks.append(task)
        return sensor

    async def stop(self, sensor_index: int = -1) -> None:
        task = self._tasks.pop(sensor_index)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def next_event(self, timeout: float = 5.0) -> ReceivedEvent:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def silent_for(self, seconds: float) -> bool:
        try:
            await self.next_event(seconds)
        except TimeoutError:
            return True
        return False

    async def subscribed(self, subject: str) -> None:
        """Publish probes until one comes through: the core subscription is then in place."""
        async with asyncio.timeout(5):
            while True:
                await self.client.publish(subject, b'"probe"', headers={"Nats-Msg-Id": "probe"})
                with contextlib.suppress(TimeoutError):
                    event = await self.next_event(0.05)
                    assert event.id == "probe"
                    break
        # Probes still in flight behind the first one are drained so tests see only theirs.
        while not await self.silent_for(0.1):
            pass

    async def make_stream(self) -> None:
        await self.client.jetstream().add_stream(
            StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"])
        )

    async def close(self) -> None:
        while self._tasks:
            await self.stop()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        with contextlib.suppress(NotFoundError):
            await self.client.jetstream().delete_stream(self.stream)
        await self.client.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A Rig on the shared server; its sensors stop and its stream goes after the test."""
    bus = MemoryBus()
    await bus.start()
    rig = Rig(await nats_connection(), bus)
    try:
        yield rig
    finally:
        await rig.close()
        await bus.close()


async def test_core_subject_messages_reach_the_bus_as_events(rig: Rig) -> None:
    """Core NATS messages on a wildcard subject become stamped events on the bus, in order."""
    sensor = rig.start({"subjects": [f"{rig.prefix}.*"]})
    await rig.subscribed(f"{rig.prefix}.probe")
    assert sensor.connected
    for number in range(3):
        await rig.client.publish(
            f"{rig.prefix}.eu", b'{"n": %d}' % number, headers={"Nats-Msg-Id": f"m{number}"}
        )
    events = [await rig.next_event() for _ in range(3)]
    assert [(e.id, e.sensor, e.event.data) for e in events] == [
        ("m0", "orders", {"n": 0}),
        ("m1", "orders", {"n": 1}),
        ("m2", "orders", {"n": 2}),
    ]
    assert events[0].event.source == f"nats://{rig.prefix}.eu"
    assert events[0].event.type == "eventflow.nats.message"


async def test_cloudevents_binding_binary_and_structured_are_honoured(rig: Rig) -> None:
    """ce-* headers and application/cloudevents+json payloads keep the sender's attributes."""
    rig.start({"subjects": [f"{rig.prefix}.>"]})
    await rig.subscribed(f"{rig.prefix}.probe")
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "b1",
        "ce-source": "/shop",
        "ce-type": "order.paid",
        "content-type": "application/json",
    }
    await rig.client.publish(f"{rig.prefix}.b", b'{"total": 5}', headers=binary)
    structured = b'{"specversion":"1.0","id":"s1","source":"/shop","type":"order.sent"}'
    await rig.client.publish(
        f"{rig.prefix}.s", structured, headers={"content-type": "application/cloudevents+json"}
    )
    first, second = await rig.next_event(), await rig.next_event()
    assert first.event == Event(
        id="b1",
        source="/shop",
        type="order.paid",
        datacontenttype="application/json",
        data={"total": 5},
    )
    assert second.event == Event(id="s1", source="/shop", type="order.sent")


async def test_jetstream_restart_mid_way_loses_and_doubles_nothing(rig: Rig) -> None:
    """A sensor stopped while emitting leaves that message unacked; the next takes the rest."""
    await rig.make_stream()
    js = rig.client.jetstream()
    for number in range(20):
        await js.publish(f"{rig.prefix}.orders", b'{"n": %d}' % number)
    spec = {"jetstream": {"stream": rig.stream, "consumer": "sensor", "ackWaitSeconds": 0.5}}
    stuck = asyncio.Event()

    def stall_on_sixth(real: Emit) -> Emit:
        count = 0

        async def emit(event: Event) -> ReceivedEvent:
            nonlocal count
            count += 1
            if count == 6:
                stuck.set()
                await asyncio.Event().wait()  # the crash comes while the bus has not taken it
            return await real(event)

        return emit

    rig.start(spec, stall_on_sixth)
    async with asyncio.timeout(5):
        await stuck.wait()
    await rig.stop()
    rig.start(spec)
    ids = [(await rig.next_event()).id for _ in range(20)]
    assert sorted(ids) == sorted(f"{rig.stream}/{seq}" for seq in range(1, 21))
    assert await rig.silent_for(0.7)  # longer than ackWait: nothing comes back
    info = await js.consumer_info(rig.stream, "sensor")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_bus_failure_naks_and_the_message_comes_back(rig: Rig) -> None:
    """When the bus refuses an event, the message is nak'ed, redelivered, then acked once."""
    await rig.make_stream()
    await rig.client.jetstream().publish(f"{rig.prefix}.x", b'"hello"')
    calls = 0

    def refuse_first(real: Emit) -> Emit:
        async def emit(event: Event) -> ReceivedEvent:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BusUnavailableError("bus down", delay=0.1)
            return await real(event)

        return emit

    rig.start({"jetstream": {"stream": rig.stream, "consumer": "c"}}, refuse_first)
    event = await rig.next_event()
    assert (event.id, event.event.data, calls) == (f"{rig.stream}/1", "hello", 2)
    assert await rig.silent_for(0.3)


async def test_poison_message_becomes_a_poison_event_and_is_not_redelivered(rig: Rig) -> None:
    """Bad JSON on JetStream: one eventflow.nats.poison event, counted, terminated; next goes on."""
    await rig.make_stream()
    js = rig.client.jetstream()
    await js.publish(f"{rig.prefix}.x", b"{not json")
    await js.publish(f"{rig.prefix}.x", b'{"ok": true}')
    spec = {"jetstream": {"stream": rig.stream, "consumer": "c", "ackWaitSeconds": 0.5}}
    sensor = rig.start(spec)
    poison, good = await rig.next_event(), await rig.next_event()
    assert poison.event.type == "eventflow.nats.poison"
    assert poison.id == f"poison/{rig.stream}/1"
    assert poison.event.data == {
        "reason": "payload is not valid JSON (payloadFormat json expects a JSON value, so the"
        " payload expected): Expecting property name enclosed in double quotes at 1:2",
        "subject": f"{rig.prefix}.x",
        "headers": {},
        "size": 9,
        "payloadBase64": "e25vdCBqc29u",
    }
    assert (good.id, good.event.data) == (f"{rig.stream}/2", {"ok": True})
    assert sensor.poisoned == 1
    assert await rig.silent_for(0.7)


async def test_poison_message_goes_to_the_dead_letter_subject_when_set(rig: Rig) -> None:
    """With deadLetterSubject, the poison message is published there with its reason."""
    dead = await rig.client.subscribe(f"{rig.prefix}-dead")
    sensor = rig.start(
        {
            "subjects": [f"{rig.prefix}.>"],
            "maxMessageBytes": 16,
            "deadLetterSubject": f"{rig.prefix}-dead",
        }
    )
    await rig.subscribed(f"{rig.prefix}.probe")
    await rig.client.publish(f"{rig.prefix}.big", b'"' + b"x" * 20 + b'"')
    letter = await dead.next_msg(timeout=5)
    assert letter.data == b'"' + b"x" * 20 + b'"'
    assert letter.headers == {
        REASON_HEADER: "payload is 22 bytes, more than maxMessageBytes (16)",
        SUBJECT_HEADER: f"{rig.prefix}.big",
    }
    assert sensor.poisoned == 1
    assert await rig.silent_for(0.2)


async def test_unreachable_server_reports_not_connected_and_keeps_trying() -> None:
    """With no server at the URL, the sensor stays up, not connected, retrying with backoff."""
    sensor = NatsSensor(
        "orders", NatsConfig.model_validate({"url": "nats://127.0.0.1:1", "subjects": ["a"]})
    )
    bus = MemoryBus()
    task = asyncio.create_task(sensor.run(make_emit("orders", bus, lambda: NOW)))
    await asyncio.sleep(0.3)
    assert (task.done(), sensor.connected) == (False, False)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
