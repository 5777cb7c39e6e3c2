"""MinIO's Kafka and NATS notification targets: the stream sensors with the s3 format, on a real
Kafka-protocol broker (tansu) and the machine's NATS with JetStream, into a real MemoryBus.

Each record or message holds a MinIO notification document (`EventName`, `Key`, `Records`);
it becomes one CloudEvent per object change with the key decoded, repeated and older changes
dropped, filters applied, and the source acknowledged only after all of them are on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js.api import StreamConfig

from eventflow.bus.memory import MemoryBus
from eventflow.errors import BusUnavailableError
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit
from eventflow.sensing.state import MemorySensorState, memory_context
from sensors import kafka, nats
from sensors.kafka import KafkaConfig, KafkaSensor
from sensors.kafka.sensor import Backoff
from sensors.nats import NatsConfig, NatsSensor
from sensors.objectstore.reporting import NEWEST, SEEN, Reporter
from tests.contract.conftest import NATS_URL, nats_connection
from tests.integration.test_kafka_sensor import committed, create_topic, produce
from tests.kafka_broker import (
    Broker,
    kafka_broker_fixture,  # noqa: F401  # registers the `kafka_broker` fixture
    unique_name,
)

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
JOIN_SECONDS = 10.0
AWKWARD = "in/a b+c=d%é.csv"
# MinIO writes keys with Go's url.QueryEscape: '/' as %2F, ' ' as '+', '+' as %2B.
AWKWARD_SENT = "in%2Fa+b%2Bc%3Dd%25%C3%A9.csv"
NOT_JSON_REASON = (
    "message body: not JSON (Expecting property name enclosed in double quotes at 1:2)"
)


def minio_record(sent_key: str, sequencer: str, request_id: str) -> dict[str, Any]:
    """One record as MinIO's targets send it (bucket raw-data, a put of 3 bytes)."""
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2024-05-01T12:00:00.456Z",
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "::1"},
        "responseElements": {
            "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
            "x-amz-request-id": request_id,
            "x-minio-deployment-id": "6d7a6e0b-6f5c-4b0e-9a43-2b1f0e6c8d11",
            "x-minio-origin-endpoint": "http://127.0.0.1:9000",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": "raw-data",
                "ownerIdentity": {"principalId": "minioadmin"},
                "arn": "arn:aws:s3:::raw-data",
            },
            "object": {
                "key": sent_key,
                "size": 3,
                "eTag": "0b8bd9b4b8a4a4b8c5a7d5e0f1d2c3b4",
                "contentType": "text/csv",
                "userMetadata": {"content-type": "text/csv"},
                "sequencer": sequencer,
            },
        },
        "source": {"host": "::1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7"},
    }


def minio_document(*records: dict[str, Any]) -> bytes:
    """The notification MinIO's Kafka and NATS targets publish: EventName and Key on top."""
    first = records[0]
    key = f"raw-data/{first['s3']['object']['key']}"
    return json.dumps(
        {"EventName": first["eventName"], "Key": key, "Records": list(records)}
    ).encode()


# The cases both sensors are given, in order: a put of an awkward key; the same notification
# again (a redelivery); one document with a newer then an older change of one key; a key the
# prefix filter excludes; and a value no decoder understands.
CASES = [
    minio_document(minio_record(AWKWARD_SENT, "17CB3A0A0D4C0001", "REQ1")),
    minio_document(minio_record(AWKWARD_SENT, "17CB3A0A0D4C0001", "REQ1")),
    minio_document(
        minio_record("in%2Fx.csv", "17CB3A0A0D4C0003", "REQ3"),
        minio_record("in%2Fx.csv", "17CB3A0A0D4C0002", "REQ2"),
    ),
    minio_document(minio_record("out%2Fskip.csv", "17CB3A0A0D4C0004", "REQ4")),
    b"{not json",
]
S3_BLOCK = {"bucket": "raw-data", "prefix": "in/", "events": ["s3:ObjectCreated:*"]}


def check_object_events(events: list[Event]) -> None:
    """The two object events CASES yield, in order, shaped by the S3 mapping."""
    assert [(event.type, event.subject) for event in events] == [
        ("com.amazonaws.s3.ObjectCreated:Put", AWKWARD),
        ("com.amazonaws.s3.ObjectCreated:Put", "in/x.csv"),
    ]
    assert [event.data["sequencer"] for event in events] == [
        "17CB3A0A0D4C0001",
        "17CB3A0A0D4C0003",
    ]
    assert {event.source for event in events} == {"com.amazonaws.s3.unknown.raw-data"}
    assert events[0].data["bucket"] == "raw-data"
    assert events[0].data["key"] == AWKWARD


async def check_state(state: MemorySensorState) -> None:
    """What the reporter remembered: the newest sequencer per key, nothing for the rest."""
    found = await state.read_spaces(
        {NEWEST: ["raw-data/" + AWKWARD, "raw-data/in/x.csv", "raw-data/out/skip.csv"]}
    )
    assert found[NEWEST] == {
        "raw-data/" + AWKWARD: "17CB3A0A0D4C0001",
        "raw-data/in/x.csv": "17CB3A0A0D4C0003",
    }
    assert len(await state.scan(SEEN)) == 2


@dataclass
class Collected:
    inbox: asyncio.Queue[Event]

    async def take(self, count: int, timeout: float = JOIN_SECONDS) -> list[Event]:
        async with asyncio.timeout(timeout):
            return [await self.inbox.get() for _ in range(count)]

    async def nothing_more(self, seconds: float = 0.8) -> None:
        await asyncio.sleep(seconds)
        assert self.inbox.empty(), f"unexpected event {self.inbox.get_nowait()}"


@contextlib.asynccontextmanager
async def collecting(bus: MemoryBus) -> AsyncIterator[Collected]:
    inbox: asyncio.Queue[Event] = asyncio.Queue()

    async def read() -> None:
        async for delivery in bus.subscribe("engine"):
            await inbox.put(delivery.event.event)
            await delivery.ack()

    task = asyncio.create_task(read(), name="collector")
    try:
        yield Collected(inbox)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def sensor_running(sensor: KafkaSensor | NatsSensor, emit: Emit) -> AsyncIterator[None]:
    task = asyncio.create_task(sensor.run(emit), name="sensor")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def refusing_once(emit: Emit, refuse_at: int) -> Emit:
    """`emit`, except that its `refuse_at`-th call (from 1) fails as a bus outage would."""
    calls = 0

    async def flaky(event: Event) -> ReceivedEvent:
        nonlocal calls
        calls += 1
        if calls == refuse_at:
            raise BusUnavailableError("bus down for the test", delay=0.05)
        return await emit(event)

    return flaky


def kafka_sensor(bootstrap: str, topic: str, state: MemorySensorState) -> KafkaSensor:
    config = KafkaConfig.model_validate(
        {
            "bootstrapServers": bootstrap,
            "topics": [topic],
            "startFrom": "earliest",
            "groupId": unique_name("minio"),
            "valueFormat": "s3",
            "s3": S3_BLOCK,
        }
    )
    made = kafka.plugin.create("uploads", config, memory_context(lambda: NOW))
    assert made.notifications is not None
    assert made.notifications.config == config.s3
    # As the plugin makes it, on a state the test reads and with the test's short timings.
    return KafkaSensor(
        "uploads",
        config,
        backoff=Backoff(initial=0.05, maximum=0.5),
        session_timeout_seconds=3.0,
        heartbeat_interval_seconds=0.1,
        notifications=Reporter("uploads", config.s3, state, lambda: NOW),
    )


async def test_minio_kafka_notifications_become_one_event_per_change(
    kafka_broker: Broker,
) -> None:
    """Kafka records of MinIO notifications: one event per new change, exact keys, duplicates,
    older changes and filtered keys dropped, the undecodable value a poison event; the offset
    is committed past all five records."""
    topic = await create_topic(kafka_broker.bootstrap)
    await produce(
        kafka_broker.bootstrap,
        topic,
        [(b"raw-data/k", value, [("minio-event", b"put")]) for value in CASES],
    )
    state = MemorySensorState(lambda: NOW)
    sensor = kafka_sensor(kafka_broker.bootstrap, topic, state)
    bus = MemoryBus()
    await bus.start()
    async with (
        collecting(bus) as seen,
        sensor_running(sensor, make_emit("uploads", bus, lambda: NOW)),
    ):
        events = await seen.take(3)
        await seen.nothing_more()
        group = sensor.config.group_id("uploads")
        async with asyncio.timeout(JOIN_SECONDS):
            while await committed(kafka_broker.bootstrap, group, topic) != len(CASES):
                await asyncio.sleep(0.1)
    await bus.close()
    check_object_events(events[:2])
    poison = events[2]
    assert (poison.type, poison.id, poison.data["reason"]) == (
        "eventflow.kafka.poison",
        f"{topic}/0/4",
        NOT_JSON_REASON,
    )
    assert sensor.poison_count == 1
    assert sensor.notifications is not None
    counts = sensor.notifications.counts
    assert (counts.emitted, counts.duplicates, counts.stale, counts.filtered) == (2, 1, 1, 1)
    await check_state(state)


async def test_kafka_offset_waits_until_every_change_of_a_record_is_on_the_bus(
    kafka_broker: Broker,
) -> None:
    """A record of two changes while the bus is down: no commit and nothing remembered; once
    the bus is back both changes are emitted and the offset moves."""
    topic = await create_topic(kafka_broker.bootstrap)
    document = minio_document(
        minio_record("in%2Fa.csv", "17CB3A0A0D4C0001", "REQ1"),
        minio_record("in%2Fb.csv", "17CB3A0A0D4C0002", "REQ2"),
    )
    await produce(kafka_broker.bootstrap, topic, [(b"raw-data/in/a.csv", document, [])])
    state = MemorySensorState(lambda: NOW)
    sensor = kafka_sensor(kafka_broker.bootstrap, topic, state)
    group = sensor.config.group_id("uploads")
    bus = MemoryBus()
    await bus.start()
    await bus.close()  # publish now raises BusUnavailableError
    async with (
        collecting(bus) as seen,
        sensor_running(sensor, make_emit("uploads", bus, lambda: NOW)),
    ):
        async with asyncio.timeout(JOIN_SECONDS):
            while not sensor.connected:
                await asyncio.sleep(0.05)
        await asyncio.sleep(3.0)  # the group forms, the record is fetched and refused
        assert await committed(kafka_broker.bootstrap, group, topic) is None
        assert await state.scan(SEEN) == []
        await bus.start()
        events = await seen.take(2)
        async with asyncio.timeout(JOIN_SECONDS):
            while await committed(kafka_broker.bootstrap, group, topic) != 1:
                await asyncio.sleep(0.1)
    await bus.close()
    assert [event.subject for event in events] == ["in/a.csv", "in/b.csv"]
    assert len(await state.scan(SEEN)) == 2


@dataclass
class Stream:
    name: str
    prefix: str


@contextlib.asynccontextmanager
async def jetstream_stream() -> AsyncIterator[Stream]:
    """A stream of its own on the shared server, deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    stream = Stream(f"MINIO_{tag}", f"minio.{tag}")
    client = await nats_connection()
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=stream.name, subjects=[f"{stream.prefix}.>"]))
    try:
        yield stream
    finally:
        await js.delete_stream(stream.name)
        await client.close()


async def publish_all(subject: str, payloads: list[bytes]) -> None:
    client = await nats_connection()
    try:
        js = client.jetstream()
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await client.close()


async def consumer_settled(stream: str, consumer: str, delivered: int) -> None:
    """Wait until the consumer has delivered `delivered` messages and none awaits its ack."""
    client = await nats_connection()
    try:
        async with asyncio.timeout(JOIN_SECONDS):
            while True:
                info = await client.jetstream().consumer_info(stream, consumer)
                if info.num_ack_pending == 0 and info.delivered.stream_seq == delivered:
                    return
                await asyncio.sleep(0.1)
    finally:
        await client.close()


def nats_sensor(stream: Stream, state: MemorySensorState) -> NatsSensor:
    config = NatsConfig.model_validate(
        {
            "url": NATS_URL,
            "jetstream": {"stream": stream.name, "consumer": "minio", "deliverPolicy": "all"},
            "payloadFormat": "s3",
            "s3": S3_BLOCK,
        }
    )
    made = nats.plugin.create("uploads", config, memory_context(lambda: NOW))
    assert made.notifications is not None
    assert made.notifications.config == config.s3
    # As the plugin makes it, on a state the test reads afterwards.
    return NatsSensor(
        "uploads", config, notifications=Reporter("uploads", config.s3, state, lambda: NOW)
    )


async def test_minio_nats_notifications_become_one_event_per_change() -> None:
    """JetStream messages of MinIO notifications: the same events as on Kafka, each message
    acked (the poison one terminated) once its changes are on the bus."""
    async with jetstream_stream() as stream:
        await publish_all(f"{stream.prefix}.raw-data", CASES)
        state = MemorySensorState(lambda: NOW)
        sensor = nats_sensor(stream, state)
        bus = MemoryBus()
        await bus.start()
        emit = make_emit("uploads", bus, lambda: NOW)
        async with collecting(bus) as seen, sensor_running(sensor, emit):
            events = await seen.take(3)
            await seen.nothing_more()
            await consumer_settled(stream.name, "minio", len(CASES))
        await bus.close()
    check_object_events(events[:2])
    poison = events[2]
    assert (poison.type, poison.data["reason"]) == ("eventflow.nats.poison", NOT_JSON_REASON)
    assert sensor.poisoned == 1
    await check_state(state)


async def test_nats_message_is_redelivered_when_the_bus_refuses_one_of_its_changes() -> None:
    """The bus refuses the second change of a message: the message is nak'ed, nothing is
    remembered, and the redelivery emits both (the first again, same id), then is acked."""
    document = minio_document(
        minio_record("in%2Fa.csv", "17CB3A0A0D4C0001", "REQ1"),
        minio_record("in%2Fb.csv", "17CB3A0A0D4C0002", "REQ2"),
    )
    async with jetstream_stream() as stream:
        await publish_all(f"{stream.prefix}.raw-data", [document])
        state = MemorySensorState(lambda: NOW)
        sensor = nats_sensor(stream, state)
        bus = MemoryBus()
        await bus.start()
        emit = refusing_once(make_emit("uploads", bus, lambda: NOW), refuse_at=2)
        async with collecting(bus) as seen, sensor_running(sensor, emit):
            events = await seen.take(3)
            await seen.nothing_more()
            await consumer_settled(stream.name, "minio", 1)
        await bus.close()
    assert [event.subject for event in events] == ["in/a.csv", "in/a.csv", "in/b.csv"]
    assert events[0].id == events[1].id
    assert len(await state.scan(SEEN)) == 2
