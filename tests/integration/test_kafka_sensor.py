"""The Kafka sensor on a real Kafka-protocol broker (tansu) into a real MemoryBus through the real
intake: records become events, offsets move only once events are on the bus, a restart loses
and repeats nothing committed, CloudEvents bindings, poison records, and a broker that is late.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from eventflow.bus.memory import MemoryBus
from eventflow.events import Event
from eventflow.sensing.intake import make_emit
from eventflow.sensing.state import memory_context
from sensors.kafka import KafkaConfig, KafkaSensor, plugin
from sensors.kafka.sensor import Backoff
from tests.kafka_broker import (
    Broker,
    free_port,
    kafka_broker_fixture,  # noqa: F401  # registers the `kafka_broker` fixture
    tansu_binary,
    unique_name,
)

# A consumer group forms in about 2 s on tansu with the test settings.
JOIN_SECONDS = 10.0
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
Header = tuple[str, bytes]


async def create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = unique_name("orders")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[Header]]],
    partition: int = 0,
) -> None:
    """Send (key, value, headers) records to one partition, in order, and wait for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    try:
        await producer.start()
        for key, value, headers in records:
            await producer.send_and_wait(
                topic, value, key=key, headers=list(headers), partition=partition
            )
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset, read without joining the group (manual assignment)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        tp = TopicPartition(topic, partition)
        reader.assign([tp])
        offset = await reader.committed(tp)
    finally:
        await reader.stop()
    return None if offset is None or offset < 0 else int(offset)


@dataclass
class Running:
    sensor: KafkaSensor
    bus: MemoryBus
    inbox: asyncio.Queue[Event]

    async def take(self, count: int, timeout: float = JOIN_SECONDS) -> list[Event]:
        async with asyncio.timeout(timeout):
            return [await self.inbox.get() for _ in range(count)]

    async def nothing_more(self, seconds: float = 0.6) -> None:
        await asyncio.sleep(seconds)
        assert self.inbox.empty(), f"unexpected event {self.inbox.get_nowait()}"


def sensor_config(bootstrap: str, topic: str, **spec: Any) -> KafkaConfig:
    return KafkaConfig.model_validate(
        {
            "bootstrapServers": bootstrap,
            "topics": [topic],
            "startFrom": "earliest",
            "groupId": unique_name("sensor"),
            **spec,
        }
    )


async def _collect(bus: MemoryBus, inbox: asyncio.Queue[Event]) -> None:
    async for delivery in bus.subscribe("engine"):
        await inbox.put(delivery.event.event)
        await delivery.ack()


@contextlib.asynccontextmanager
async def running(config: KafkaConfig, bus: MemoryBus | None = None) -> AsyncIterator[Running]:
    """The sensor consuming into a MemoryBus; stopped (offsets committed) on exit."""
    bus = bus or MemoryBus()
    await bus.start()
    sensor = KafkaSensor(
        "orders",
        config,
        backoff=Backoff(initial=0.05, maximum=0.5),
        session_timeout_seconds=3.0,
        heartbeat_interval_seconds=0.1,
        metadata_refresh_seconds=1.0,
    )
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    emit = make_emit("orders", bus, lambda: RECEIVED)
    tasks = [
        asyncio.create_task(sensor.run(emit), name="kafka-sensor"),
        asyncio.create_task(_collect(bus, inbox), name="collector"),
    ]
    try:
        yield Running(sensor, bus, inbox)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def position(topic: str, offset: int) -> str:
    return f"{topic}/0/{offset}"


async def test_json_records_become_events_and_their_offsets_are_committed(
    kafka_broker: Broker,
) -> None:
    """Each JSON record becomes an event with the default attributes; the offset is committed."""
    topic = await create_topic(kafka_broker.bootstrap)
    await produce(
        kafka_broker.bootstrap,
        topic,
        [(b"order-1", b'{"total": 10}', []), (None, b"[1, 2]", [("trace", b"abc")])],
    )
    config = sensor_config(kafka_broker.bootstrap, topic)
    async with running(config) as run:
        first, second = await run.take(2)
        assert run.sensor.connected is True
    assert run.sensor.connected is False
    assert (first.id, first.type, first.source, first.subject, first.data) == (
        position(topic, 0),
        "eventflow.kafka.record",
        f"kafka://{topic}",
        "order-1",
        {"total": 10},
    )
    assert first.datacontenttype == "application/json"
    assert first.time is not None
    assert (second.id, second.subject, second.data) == (position(topic, 1), None, [1, 2])
    assert await committed(kafka_broker.bootstrap, config.group_id("orders"), topic) == 2


async def test_restarted_sensor_reads_only_records_not_yet_committed(
    kafka_broker: Broker,
) -> None:
    """After a restart the group resumes at its commit: new records arrive, old ones do not."""
    topic = await create_topic(kafka_broker.bootstrap)
    config = sensor_config(kafka_broker.bootstrap, topic)
    await produce(kafka_broker.bootstrap, topic, [(None, b'{"n": %d}' % n, []) for n in range(3)])
    async with running(config) as run:
        assert [event.data for event in await run.take(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    await produce(
        kafka_broker.bootstrap, topic, [(None, b'{"n": %d}' % n, []) for n in range(3, 5)]
    )
    async with running(config) as run:
        again = await run.take(2)
        await run.nothing_more()
    assert [event.id for event in again] == [position(topic, 3), position(topic, 4)]
    assert await committed(kafka_broker.bootstrap, config.group_id("orders"), topic) == 5


async def test_record_is_retried_and_not_committed_while_the_bus_refuses_it(
    kafka_broker: Broker,
) -> None:
    """A closed bus makes emit fail: the offset stays put until the event is on the bus."""
    topic = await create_topic(kafka_broker.bootstrap)
    config = sensor_config(kafka_broker.bootstrap, topic)
    await produce(kafka_broker.bootstrap, topic, [(b"k", b'{"n": 1}', [])])
    bus = MemoryBus()
    async with running(config, bus) as run:
        await bus.close()  # publish now raises BusUnavailableError
        async with asyncio.timeout(JOIN_SECONDS):
            while not run.sensor.connected:
                await asyncio.sleep(0.05)
        await asyncio.sleep(3.0)  # the group forms, the record is fetched and refused
        assert await committed(kafka_broker.bootstrap, config.group_id("orders"), topic) is None
        await bus.start()
        [event] = await run.take(1)
        assert event.id == position(topic, 0)
        async with asyncio.timeout(JOIN_SECONDS):
            while await committed(kafka_broker.bootstrap, config.group_id("orders"), topic) != 1:
                await asyncio.sleep(0.1)


async def test_cloudevents_binary_and_structured_records_keep_their_attributes(
    kafka_broker: Broker,
) -> None:
    """ce_* headers and application/cloudevents+json values become the events they describe."""
    topic = await create_topic(kafka_broker.bootstrap)
    structured = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/shop",
        "type": "com.example.paid",
        "data": {"total": 3},
    }
    await produce(
        kafka_broker.bootstrap,
        topic,
        [
            (
                b"k",
                b'{"total": 5}',
                [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"b-1"),
                    ("ce_source", b"/shop"),
                    ("ce_type", b"com.example.ordered"),
                    ("ce_traceparent", b"00-ab-cd-01"),
                    ("content-type", b"application/json"),
                ],
            ),
            (
                None,
                json.dumps(structured).encode(),
                [("content-type", b"application/cloudevents+json; charset=utf-8")],
            ),
        ],
    )
    async with running(sensor_config(kafka_broker.bootstrap, topic)) as run:
        binary, structured_event = await run.take(2)
    assert binary == Event(
        id="b-1",
        source="/shop",
        type="com.example.ordered",
        datacontenttype="application/json",
        data={"total": 5},
        extensions={"traceparent": "00-ab-cd-01"},
    )
    assert structured_event == Event.from_dict(structured)


async def test_poison_record_is_published_as_a_poison_event_and_the_sensor_goes_on(
    kafka_broker: Broker,
) -> None:
    """A value that is not JSON becomes an eventflow.kafka.poison event; the next record flows."""
    topic = await create_topic(kafka_broker.bootstrap)
    await produce(
        kafka_broker.bootstrap, topic, [(b"k", b"{not json", []), (None, b'{"ok": true}', [])]
    )
    config = sensor_config(kafka_broker.bootstrap, topic)
    async with running(config) as run:
        poison, good = await run.take(2)
        assert run.sensor.poison_count == 1
    assert (poison.type, poison.id, poison.subject) == (
        "eventflow.kafka.poison",
        position(topic, 0),
        "k",
    )
    assert poison.data == {
        "reason": "value is not valid JSON: Expecting property name enclosed in double quotes"
        " at 1:2",
        "topic": topic,
        "partition": 0,
        "offset": 0,
        "key_base64": base64.b64encode(b"k").decode(),
        "value_base64": base64.b64encode(b"{not json").decode(),
    }
    assert (good.id, good.data) == (position(topic, 1), {"ok": True})
    assert await committed(kafka_broker.bootstrap, config.group_id("orders"), topic) == 2


async def test_poison_record_goes_to_the_dead_letter_topic_when_one_is_set(
    kafka_broker: Broker,
) -> None:
    """With deadLetterTopic the raw record is copied there with the reason; no poison event."""
    topic = await create_topic(kafka_broker.bootstrap)
    dead = await create_topic(kafka_broker.bootstrap)
    big = b'"' + b"x" * 20 + b'"'
    await produce(kafka_broker.bootstrap, topic, [(b"k", big, [("h", b"v")]), (None, b"1", [])])
    config = sensor_config(kafka_broker.bootstrap, topic, deadLetterTopic=dead, maxRecordBytes=10)
    async with running(config) as run:
        [good] = await run.take(1)
        assert run.sensor.poison_count == 1
    assert (good.id, good.data) == (position(topic, 1), 1)
    reader = AIOKafkaConsumer(
        dead, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        record = await asyncio.wait_for(reader.getone(), JOIN_SECONDS)
    finally:
        await reader.stop()
    assert (record.key, record.value) == (b"k", big)
    assert list(record.headers) == [
        ("h", b"v"),
        ("eventflow_poison_reason", b"value is 22 bytes, more than maxRecordBytes (10)"),
        ("eventflow_poison_record", position(topic, 0).encode()),
    ]


async def test_sensor_follows_a_broker_that_starts_late_and_goes_away() -> None:
    """No broker at start: not connected, the problem named; once it listens, records flow and
    the problem clears; it dies: not connected."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    url = f"tcp://{bootstrap}"
    config = KafkaConfig.model_validate(
        {"bootstrapServers": bootstrap, "topics": ["late"], "startFrom": "earliest"}
    )
    broker: Broker | None = None
    try:
        async with running(config) as run:
            await asyncio.sleep(0.5)
            assert run.sensor.connected is False
            problem = run.sensor.problem or ""
            assert problem.startswith(f"brokers {bootstrap}: ")
            assert problem.endswith(
                "; check bootstrapServers, security and that the brokers are up"
            )
            broker = Broker(
                port,
                subprocess.Popen(
                    [
                        tansu_binary(),
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
            async with asyncio.timeout(JOIN_SECONDS):
                while True:
                    with contextlib.suppress(KafkaError):
                        await produce(bootstrap, "late", [(None, b'{"n": 1}', [])])
                        break
                    await asyncio.sleep(0.1)
            [event] = await run.take(1)
            assert (event.id, event.data) == ("late/0/0", {"n": 1})
            assert run.sensor.connected is True
            assert run.sensor.problem is None
            broker.stop()
            async with asyncio.timeout(JOIN_SECONDS):
                while run.sensor.connected:
                    await asyncio.sleep(0.05)
    finally:
        if broker is not None:
            broker.stop()


def test_plugin_creates_a_kafka_sensor_from_its_config() -> None:
    """The entry-point object validates spec.kafka and builds a not-yet-connected sensor."""
    config = plugin.config_model.model_validate(
        {"bootstrapServers": "127.0.0.1:9092", "topics": ["orders"]}
    )
    sensor = plugin.create("orders", config, memory_context())
    assert (sensor.name, sensor.connected, sensor.poison_count) == ("orders", False, 0)
