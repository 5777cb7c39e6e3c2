"""The Kafka bus on a real Kafka-protocol broker (tansu): keys and headers, offsets committed
only after acks, redelivery after a consumer leaves, shared work, and a broker that is gone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from eventflow.bus.kafka import KafkaBus
from eventflow.bus.protocol import DeadLetter, Delivery
from eventflow.errors import BusUnavailableError, ConfigError, PermanentError
from tests.contract.conftest import make_event, pumps_on
from tests.kafka_broker import (
    Broker,
    isolated_kafka_bus,
    kafka_broker_fixture,  # noqa: F401  # registers the `kafka_broker` fixture
    running_broker,
    unique_name,
)

# A consumer group forms in about 2 s on tansu with the test settings; a rebalance as long.
JOIN_SECONDS = 8.0


def on_subject(number: int, subject: str) -> object:
    event = make_event(number)
    return replace(event, event=replace(event.event, subject=subject))


async def test_published_event_round_trips_keyed_by_subject_with_cloudevents_headers(
    kafka_broker: Broker,
) -> None:
    """The record carries the subject as key, the structured content type and ce_ headers."""
    async with isolated_kafka_bus(kafka_broker) as bus, pumps_on(bus) as subscribe:
        pump = await subscribe(unique_name("engine"))
        await bus.publish(make_event(1))
        delivery = await pump.next(JOIN_SECONDS)
        assert (delivery.event, delivery.attempt) == (make_event(1), 1)
        await delivery.ack()
        raw = AIOKafkaConsumer(
            bus._topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
        )
        await raw.start()
        try:
            record = await asyncio.wait_for(raw.getone(), JOIN_SECONDS)
        finally:
            await raw.stop()
        assert record.key == b"order-1"
        assert record.value == make_event(1).encode()
        assert list(record.headers) == [
            ("content-type", b"application/cloudevents+json; charset=UTF-8"),
            ("ce_id", b"evt-1"),
            ("ce_type", b"com.example.order.created"),
            ("ce_source", b"/tests/contract"),
        ]
        assert await bus.drain(2.0) is True


async def test_unacked_delivery_goes_to_the_next_consumer_of_the_group(
    kafka_broker: Broker,
) -> None:
    """A consumer that closes without acking leaves the event to the group's next member."""
    group = unique_name("engine")
    async with isolated_kafka_bus(kafka_broker) as bus:
        async with pumps_on(bus) as subscribe:
            first = await subscribe(group)
            await bus.publish(make_event(1))
            unacked = await first.next(JOIN_SECONDS)
            assert unacked.event.id == "evt-1"
        async with pumps_on(bus) as subscribe:
            second = await subscribe(group)
            again = await second.next(JOIN_SECONDS)
            assert (again.event, again.attempt) == (make_event(1), 1)
            await again.ack()
            assert await bus.drain(2.0) is True


async def test_consumer_that_acks_three_of_five_leaves_only_the_two_unacked(
    kafka_broker: Broker,
) -> None:
    """Offsets are committed only up to the first unacked delivery of each partition."""
    group = unique_name("engine")
    async with isolated_kafka_bus(kafka_broker, partitions=1) as bus:
        for number in range(5):
            await bus.publish(make_event(number))
        async with pumps_on(bus) as subscribe:
            first = await subscribe(group)
            deliveries = await first.take(5, JOIN_SECONDS)
            assert [d.event.id for d in deliveries] == [f"evt-{n}" for n in range(5)]
            for delivery in (deliveries[0], deliveries[2], deliveries[4]):
                await delivery.ack()
            assert await bus.drain(0.3) is False
        async with pumps_on(bus) as subscribe:
            second = await subscribe(group)
            # evt-1 is the first unacked: evt-2 comes again too, its ack was not committable.
            redelivered = await second.take(4, JOIN_SECONDS)
            assert [d.event.id for d in redelivered] == ["evt-1", "evt-2", "evt-3", "evt-4"]
            for delivery in redelivered:
                await delivery.ack()
            assert await second.silent_for(0.5)
            assert await bus.drain(2.0) is True


async def test_nak_with_delay_redelivers_as_attempt_two_without_blocking_the_partition(
    kafka_broker: Broker,
) -> None:
    """nak(0.5) brings the event back after 0.5 s; the next event on its partition flows now."""
    async with isolated_kafka_bus(kafka_broker, partitions=1) as bus, pumps_on(bus) as subscribe:
        pump = await subscribe(unique_name("engine"))
        await bus.publish(make_event(1))
        await bus.publish(make_event(2))
        first = await pump.next(JOIN_SECONDS)
        naked_at = time.monotonic()
        await first.nak(0.5)
        following = await pump.next()
        assert (following.event.id, following.attempt) == ("evt-2", 1)
        assert time.monotonic() - naked_at < 0.5
        await following.ack()
        assert await bus.drain(0.2) is False
        again = await pump.next()
        assert (again.event.id, again.attempt) == ("evt-1", 2)
        assert 0.5 <= time.monotonic() - naked_at < 1.0
        await again.ack()
        assert await bus.drain(2.0) is True


async def test_delivery_not_acked_within_ack_wait_comes_again_as_attempt_two(
    kafka_broker: Broker,
) -> None:
    """A delivery held past ack_wait is handed out again; a late ack of either settles it."""
    async with (
        isolated_kafka_bus(kafka_broker, ack_wait_seconds=0.3) as bus,
        pumps_on(bus) as subscribe,
    ):
        pump = await subscribe(unique_name("engine"))
        await bus.publish(make_event(1))
        first = await pump.next(JOIN_SECONDS)
        second = await pump.next(1.0)
        assert (second.event, second.attempt) == (make_event(1), 2)
        await first.ack()
        await second.ack()
        assert await pump.silent_for(0.5)
        assert await bus.drain(2.0) is True


async def test_two_consumers_of_one_group_share_the_partitions_and_see_each_event_once(
    kafka_broker: Broker,
) -> None:
    """With two partitions, two members each get events, and no event reaches both."""
    group = unique_name("engine")
    async with isolated_kafka_bus(kafka_broker) as bus, pumps_on(bus) as subscribe:
        inbox: asyncio.Queue[tuple[str, Delivery]] = asyncio.Queue()
        first = await subscribe(group, name="replica-a", inbox=inbox)
        await subscribe(group, name="replica-b", inbox=inbox)
        # Wait until both members hold a partition, so the sharing is the group's doing.
        async with asyncio.timeout(JOIN_SECONDS):
            while len(bus._subscriptions) < 2 or not all(
                len(subscription.ledgers) == 1 for subscription in bus._subscriptions
            ):
                await asyncio.sleep(0.05)
        subjects = [f"order-{n}" for n in range(20)]
        for number, subject in enumerate(subjects):
            await bus.publish(on_subject(number, subject))  # type: ignore[arg-type]
        handled: list[tuple[str, str]] = []
        for _ in subjects:
            replica, delivery = await first.next_with_name()
            handled.append((replica, delivery.event.id))
            await delivery.ack()
        assert sorted(event_id for _, event_id in handled) == sorted(f"evt-{n}" for n in range(20))
        assert {replica for replica, _ in handled} == {"replica-a", "replica-b"}
        assert await first.silent_for(0.5)
        assert await bus.drain(2.0) is True


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b"not json",
            "undecodable payload: bus payload is not JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        (b"[1, 2]", "undecodable payload: bus payload is not a JSON object"),
        (b'{"id": "x"}', "undecodable payload: bus payload lacks eventflow's arrival stamp"),
        (
            b"",
            "undecodable payload: bus payload is not JSON: Expecting value: line 1 column 1 (char 0)",
        ),
    ],
)
async def test_undecodable_payload_is_dead_lettered_counted_and_its_offset_committed(
    kafka_broker: Broker, payload: bytes, reason: str
) -> None:
    """A record that is no eventflow event goes to the dead letters, counted; the next flows."""
    async with isolated_kafka_bus(kafka_broker, partitions=1) as bus, pumps_on(bus) as subscribe:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(bus._topic, payload)
        finally:
            await producer.stop()
        await bus.publish(make_event(1))
        pump = await subscribe(unique_name("engine"))
        delivery = await pump.next(JOIN_SECONDS)
        assert delivery.event.id == "evt-1"
        await delivery.ack()
        assert bus.undecodable_count == 1
        assert await bus.drain(2.0) is True
        assert await bus.list_dead_letters() == [
            DeadLetter(seq=0, subject=bus._topic, reason=reason, payload=payload)
        ]


async def test_event_naked_max_deliver_times_is_dead_lettered_and_replayed_once(
    kafka_broker: Broker,
) -> None:
    """After max_deliver naks the event leaves for the dead-letter topic; a replay delivers it
    again as attempt 1 and removes it; a second replay says it is not there."""
    async with (
        isolated_kafka_bus(kafka_broker, partitions=1, max_deliver=2) as bus,
        pumps_on(bus) as subscribe,
    ):
        pump = await subscribe(unique_name("engine"))
        await bus.publish(make_event(1))
        for attempt in (1, 2):
            delivery = await pump.next(JOIN_SECONDS)
            assert delivery.attempt == attempt
            await delivery.nak()
        async with asyncio.timeout(5):
            while not await bus.list_dead_letters():
                await asyncio.sleep(0.05)
        assert await bus.list_dead_letters() == [
            DeadLetter(
                seq=0,
                subject=bus._topic,
                reason="not acknowledged after 2 attempts",
                payload=make_event(1).encode(),
            )
        ]
        assert await bus.drain(2.0) is True
        await bus.replay_dead_letter(0)
        replayed = await pump.next(JOIN_SECONDS)
        assert (replayed.event, replayed.attempt) == (make_event(1), 1)
        await replayed.ack()
        assert await bus.list_dead_letters() == []
        with pytest.raises(PermanentError) as raised:
            await bus.replay_dead_letter(0)
        assert str(raised.value) == (
            f"dead letter 0 is not in topic '{bus._topic}.dead-letters' (or was replayed);"
            " list_dead_letters() shows the ones there"
        )


async def test_publish_raises_bus_unavailable_soon_after_the_broker_dies() -> None:
    """With the broker gone, publish gives up within its timeout and says what to check."""
    with running_broker() as broker:
        async with isolated_kafka_bus(broker, publish_timeout_seconds=1.0) as bus:
            await bus.publish(make_event(1))
            broker.stop()
            started = time.monotonic()
            with pytest.raises(BusUnavailableError) as raised:
                await bus.publish(make_event(2))
            assert time.monotonic() - started < 2.0
            message = str(raised.value)
            assert message.startswith(
                f"Kafka at {broker.bootstrap} did not store the event on topic {bus._topic!r}"
                " within 1s ("
            )
            assert message.endswith(
                "); check that the broker runs and that bus.url points at it,"
                " then send the event again"
            )


async def test_start_without_a_broker_raises_bus_unavailable_within_the_connect_timeout() -> None:
    """start() against a port where nothing listens fails in bounded time, naming the URL."""
    with running_broker() as broker:
        bootstrap = broker.bootstrap
    bus = KafkaBus(f"kafka://{bootstrap}", connect_timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as raised:
        await bus.start()
    assert time.monotonic() - started < 2.0
    assert str(raised.value) == (
        f"bus.url: Kafka at {bootstrap} did not answer within 1s;"
        " check that the broker runs and that bus.url points at it"
    )


async def test_publish_before_start_raises_bus_unavailable() -> None:
    """An unstarted bus refuses to publish and says to send again."""
    bus = KafkaBus("127.0.0.1:9")
    with pytest.raises(BusUnavailableError) as raised:
        await bus.publish(make_event(1))
    assert str(raised.value) == (
        "the Kafka bus (127.0.0.1:9) is not started or is stopping; send the event again shortly"
    )


async def test_starting_on_an_existing_topic_keeps_it_and_its_events(kafka_broker: Broker) -> None:
    """A second bus on the same topic verifies it and reads what the first one published."""
    topic = unique_name("events")
    async with isolated_kafka_bus(kafka_broker, topic=topic) as bus:
        await bus.publish(make_event(1))
    async with (
        isolated_kafka_bus(kafka_broker, topic=topic, partitions=3) as bus,
        pumps_on(bus) as subscribe,
    ):
        pump = await subscribe(unique_name("engine"))
        delivery = await pump.next(JOIN_SECONDS)
        assert delivery.event == make_event(1)
        await delivery.ack()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("partitions", 0, "bus: partitions: 0 is not accepted; use 1 or more"),
        ("replication_factor", -1, "bus: replication_factor: -1 is not accepted; use 1 or more"),
        ("max_in_flight", 0, "bus: max_in_flight: 0 is not accepted; use 1 or more"),
        ("fetch_batch", 0, "bus: fetch_batch: 0 is not accepted; use 1 or more"),
        ("key", "trigger", "bus: key: 'trigger' is not accepted; use subject, sensor or id"),
    ],
)
def test_bad_setting_is_refused_with_what_is_accepted(
    setting: str, value: object, message: str
) -> None:
    """Each bad constructor setting raises ConfigError naming it and the accepted values."""
    with pytest.raises(ConfigError) as raised:
        KafkaBus("127.0.0.1:9092", **{setting: value})  # type: ignore[arg-type]
    assert str(raised.value) == message
