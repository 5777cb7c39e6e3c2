"""The EventBus contract, run against every implementation (the `bus` fixture's params)."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventflow.bus.kafka import KafkaBus
from eventflow.bus.memory import MemoryBus
from eventflow.bus.nats import NatsBus
from eventflow.bus.protocol import Delivery, EventBus
from eventflow.errors import BusUnavailableError
from tests.contract.conftest import PumpFactory, make_event

CLOSED_MESSAGES = {
    MemoryBus: "the bus is stopping; send the event again shortly",
    NatsBus: "the NATS bus (nats://127.0.0.1:4222) is not started or is stopping;"
    " send the event again shortly",
}


def redelivery_window(bus: EventBus) -> float:
    """How long to watch to be sure nothing comes back: past NATS's 1 s ack_wait here."""
    return 0.1 if isinstance(bus, MemoryBus) else 1.3


async def abandon(bus: EventBus, delivery: Delivery) -> None:
    """Let go of a delivery as a crashed consumer would: NATS waits for ack_wait (1 s here);
    the memory bus has no timer, so a nak stands in for the crash."""
    if isinstance(bus, MemoryBus):
        await delivery.nak()


async def test_published_event_is_consumed_with_every_field_equal(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """A published event comes out of the bus equal to what went in, as attempt 1."""
    pump = await subscribe("engine")
    await bus.publish(make_event(1))
    delivery = await pump.next()
    assert delivery.event == make_event(1)
    assert delivery.attempt == 1
    await delivery.ack()


async def test_events_published_before_any_subscription_are_delivered(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """Events published at start-up, before the engine subscribes, wait for it, in order for
    one correlation key (Kafka orders per key, not across keys)."""
    for number in range(3):
        await bus.publish(make_event(number, subject="one-key"))
    pump = await subscribe("engine")
    deliveries = await pump.take(3)
    assert [delivery.event.id for delivery in deliveries] == ["evt-0", "evt-1", "evt-2"]


async def test_unsettled_delivery_is_redelivered_as_attempt_two(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """A delivery neither acked nor nak'ed comes back, counted as the second attempt."""
    pump = await subscribe("engine")
    await bus.publish(make_event(1))
    first = await pump.next()
    await abandon(bus, first)
    second = await pump.next()
    assert (second.event, second.attempt) == (make_event(1), 2)
    await second.ack()


async def test_nak_with_delay_redelivers_after_the_delay(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """nak(0.4) holds the event back at least 0.4 s, then delivers it as attempt 2."""
    pump = await subscribe("engine")
    await bus.publish(make_event(1))
    first = await pump.next()
    naked_at = time.monotonic()
    await first.nak(0.4)
    second = await pump.next()
    waited = time.monotonic() - naked_at
    assert (second.event.id, second.attempt) == ("evt-1", 2)
    assert 0.4 <= waited < 0.9
    await second.ack()


async def test_acked_delivery_is_not_redelivered_even_if_settled_twice(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """A second ack, or a nak after the ack, is ignored: the event does not come back."""
    pump = await subscribe("engine")
    await bus.publish(make_event(1))
    delivery = await pump.next()
    await delivery.ack()
    await delivery.ack()
    await delivery.nak()
    assert await pump.silent_for(redelivery_window(bus))
    assert await bus.drain(2.0) is True


async def test_consumers_in_one_group_share_events_and_handle_each_once(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """Two replicas in one group: every event reaches exactly one of them, and both work."""
    inbox: asyncio.Queue[tuple[str, Delivery]] = asyncio.Queue()
    first = await subscribe("engine", name="replica-a", inbox=inbox)
    await subscribe("engine", name="replica-b", inbox=inbox)
    handled: list[tuple[str, str]] = []
    for number in range(10):
        await bus.publish(make_event(number))
        replica, delivery = await first.next_with_name()
        handled.append((replica, delivery.event.id))
        await delivery.ack()
    assert sorted(event_id for _, event_id in handled) == sorted(f"evt-{n}" for n in range(10))
    assert {replica for replica, _ in handled} == {"replica-a", "replica-b"}
    assert await first.silent_for(redelivery_window(bus))


async def test_each_group_sees_every_event(bus: EventBus, subscribe: PumpFactory) -> None:
    """Two groups (engine and audit, say) each receive all events."""
    engine = await subscribe("engine")
    audit = await subscribe("audit")
    for number in range(4):
        await bus.publish(make_event(number))
    for pump in (engine, audit):
        deliveries = await pump.take(4)
        assert sorted(delivery.event.id for delivery in deliveries) == [
            "evt-0",
            "evt-1",
            "evt-2",
            "evt-3",
        ]
        for delivery in deliveries:
            await delivery.ack()
    assert await bus.drain(2.0) is True


async def test_drain_is_true_once_every_delivery_is_acked(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """drain() returns True when every published event has been acked."""
    pump = await subscribe("engine")
    for number in range(5):
        await bus.publish(make_event(number))
    for delivery in await pump.take(5):
        await delivery.ack()
    assert await bus.drain(2.0) is True


async def test_drain_is_false_while_a_delivery_is_unacked(
    bus: EventBus, subscribe: PumpFactory
) -> None:
    """drain() gives up after the grace and returns False if one event is still unacked."""
    pump = await subscribe("engine")
    for number in range(3):
        await bus.publish(make_event(number))
    deliveries = await pump.take(3)
    for delivery in deliveries[:2]:
        await delivery.ack()
    started = time.monotonic()
    assert await bus.drain(0.3) is False
    assert 0.3 <= time.monotonic() - started < 1.0


async def test_publish_after_close_raises_bus_unavailable(bus: EventBus) -> None:
    """After close(), publish refuses with BusUnavailableError saying to send again."""
    await bus.close()
    with pytest.raises(BusUnavailableError) as raised:
        await bus.publish(make_event(1))
    if isinstance(bus, KafkaBus):
        expected = (
            f"the Kafka bus ({bus._bootstrap}) is not started or is stopping;"
            " send the event again shortly"
        )
    else:
        expected = CLOSED_MESSAGES[type(bus)]
    assert str(raised.value) == expected


async def test_started_bus_is_connected_and_a_closed_one_is_not(bus: EventBus) -> None:
    """`connected` (what /readyz reports) is True once started, False after close()."""
    assert bus.connected is True
    await bus.close()
    assert bus.connected is False
