"""Benchmark of the object-store sensor: decoding SQS messages onto the bus, and poll cycles.

1. records/s from already-received SQS messages of 10 records each, through the whole `take`
   path (decode, filter, dedupe lookups, emit onto the in-memory bus, state writes), with the
   sensor state in memory and in eventflow's SQLite store. Target: >= 5,000 records/s.
2. a poll cycle of an unchanged bucket of N objects on a local ministack, the checkpoint in
   SQLite: the cycle's time and how much it adds to the process's peak RSS. Target: <= 50 MiB.

    python bench/objstore.py [--messages 1000] [--objects 10000,100000] [--concurrency 64]
                             [--generated 100000] [--skip-decode]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from eventflow.bus.memory import MemoryBus
from eventflow.sensing.intake import make_emit
from eventflow.sensing.protocol import SensorContext
from eventflow.sensing.state import memory_context
from eventflow.store.sql import SqlStore
from sensors.objectstore import ObjectStoreConfig, ObjectStoreSensor
from sensors.objectstore.receiving import QueueReceiver
from sensors.objectstore.reporting import Health, Reporter

MIB = 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


def message(index: int) -> str:
    records = [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventTime": "2024-05-01T12:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "responseElements": {"x-amz-request-id": f"REQ{index:08X}"},
            "s3": {
                "bucket": {"name": "raw-data"},
                "object": {
                    "key": f"incoming/2024/report+{index}-{part}.csv",
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "sequencer": f"0055AED6DC{index:08X}{part:02X}",
                },
            },
        }
        for part in range(10)
    ]
    return json.dumps({"Records": records})


async def decode_rate(messages: int, context: SensorContext, label: str) -> None:
    config = ObjectStoreConfig.model_validate(
        {"mode": "sqs", "sqs": {"queueUrl": "https://sqs.eu-west-1.amazonaws.com/1/q"}}
    )
    reporter = Reporter("bench", config, context.state, context.clock)
    assert config.sqs is not None
    receiver = QueueReceiver(reporter, config.sqs, Health())
    bus = MemoryBus(max_pending=messages * 10 + 1)
    await bus.start()
    emit = make_emit("bench", bus, utc_now)
    bodies = [message(index) for index in range(messages // 10 * 10)]
    started = time.perf_counter()
    # As received: batches of 10 messages (the SQS maximum) of 10 records each.
    for start in range(0, len(bodies), 10):
        batch = [(f"m{index}", bodies[index]) for index in range(start, start + 10)]
        await receiver.take(batch, emit)
    elapsed = time.perf_counter() - started
    records = reporter.counts.emitted
    print(
        f"decode+emit, state in {label}: {records} records in {elapsed:.2f} s ="
        f" {records / elapsed:,.0f} records/s"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ministack(port: int, log: Path) -> subprocess.Popen[bytes]:
    binary = Path(sys.executable).parent / "ministack"
    env = {
        **os.environ,
        "BIND_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "TMPDIR": str(log.parent),
    }
    with log.open("wb") as out:
        process = subprocess.Popen([str(binary)], env=env, stdout=out, stderr=out)
    for _ in range(300):
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/_ministack/health", timeout=1).status_code
                == 200
            ):
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"ministack did not start: {log.read_text()[-2000:]}")


def client(url: str, connections: int) -> Any:
    return AioSession().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=AioConfig(max_pool_connections=connections),
    )


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def poll_cycle(url: str, objects: int, concurrency: int, data_dir: Path) -> None:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    async with client(url, concurrency) as s3:
        await s3.create_bucket(Bucket=bucket)
        gate = asyncio.Semaphore(concurrency)

        async def put(index: int) -> None:
            async with gate:
                await s3.put_object(
                    Bucket=bucket, Key=f"data/{index:07d}/part {index % 7}.csv", Body=b"x"
                )

        started = time.perf_counter()
        await asyncio.gather(*(put(index) for index in range(objects)))
        print(f"  made {objects} objects in {time.perf_counter() - started:.1f} s")
    spec = {"bucket": bucket, "endpointUrl": url, "region": "us-east-1", "pathStyle": True}
    async with client(url, 10) as s3:
        await two_cycles(s3, spec, data_dir / f"{bucket}.db")


async def two_cycles(s3: Any, spec: dict[str, Any], database: Path) -> None:
    """A first listing that writes the checkpoint, then an unchanged one, measured."""
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    config = ObjectStoreConfig.model_validate({"mode": "poll", **spec})
    context = SensorContext(state=store.sensor_state("bench", utc_now), clock=utc_now)
    poller = ObjectStoreSensor("bench", config, context)._poller()
    bus = MemoryBus()
    await bus.start()
    emit = make_emit("bench", bus, utc_now)
    started = time.perf_counter()
    first = await poller.cycle(s3, emit)
    seconds = time.perf_counter() - started
    print(f"  first cycle (writes the checkpoint): {seconds:.1f} s, {first.listed} listed")
    before_peak, before_now = peak_rss(), current_rss()
    started = time.perf_counter()
    again = await poller.cycle(s3, emit)
    elapsed = time.perf_counter() - started
    added = max(0, peak_rss() - before_peak)
    await store.close()
    print(
        f"  unchanged cycle: {elapsed:.1f} s for {again.listed} objects"
        f" ({again.listed / elapsed:,.0f} objects/s), {again.emitted} events;"
        f" peak RSS +{added / MIB:.1f} MiB (RSS {before_now / MIB:.0f} ->"
        f" {current_rss() / MIB:.0f} MiB)"
    )


class GeneratedListing:
    """An S3 client's `list_objects_v2` paginator over `objects` generated keys, in order: the
    listing side without a server, to measure the sensor's own memory at 100,000 objects."""

    def __init__(self, objects: int) -> None:
        self.objects = objects

    def get_paginator(self, operation: str) -> GeneratedListing:
        return self

    async def paginate(self, **options: Any) -> Any:
        size = options["PaginationConfig"]["PageSize"]
        stamp = datetime(2024, 5, 1, tzinfo=UTC)
        for start in range(0, self.objects, size):
            yield {
                "Contents": [
                    {
                        "Key": f"data/{index:07d}.csv",
                        "ETag": '"e"',
                        "Size": 1,
                        "LastModified": stamp,
                    }
                    for index in range(start, min(start + size, self.objects))
                ]
            }


async def generated_cycle(objects: int, data_dir: Path) -> None:
    database = data_dir / f"generated-{objects}.db"
    await two_cycles(GeneratedListing(objects), {"bucket": "generated"}, database)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--objects", default="10000,100000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--generated",
        default="",
        help="also cycle over generated listings of these sizes (no server), e.g. 100000",
    )
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    # Per-event info lines (intake logs each event) would measure the terminal, not the sensor.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as directory:
        if not args.skip_decode:
            await decode_rate(args.messages, memory_context(utc_now), "memory")
            store = await SqlStore.open(f"sqlite+aiosqlite:///{directory}/state.db")
            context = SensorContext(state=store.sensor_state("bench", utc_now), clock=utc_now)
            await decode_rate(args.messages, context, "SQLite")
            await store.close()
        for objects in (int(size) for size in args.generated.split(",") if size):
            print(f"poll of a generated listing of {objects} objects (no server):")
            await generated_cycle(objects, Path(directory))
        port = free_port()
        process = start_ministack(port, Path(directory) / "ministack.log")
        try:
            for objects in (int(size) for size in args.objects.split(",") if size):
                print(f"poll of a bucket of {objects} objects (ministack):")
                await poll_cycle(
                    f"http://127.0.0.1:{port}", objects, args.concurrency, Path(directory)
                )
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
