"""The object-store sensor's poll mode on real servers, its checkpoint in the real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from eventflow.sensing.protocol import SensorContext
from eventflow.sensing.state import memory_context
from eventflow.store.sql import SqlStore
from sensors.objectstore import ObjectStoreConfig, ObjectStoreSensor
from sensors.objectstore.polling import BucketPoller
from tests.s3_servers import (  # noqa: F401  # registers the server fixtures
    Collector,
    S3Server,
    aws_environment_fixture,
    ministack_fixture,
    moto_fixture,
    put_many,
    running,
    s3_server_fixture,
    unique,
    wait_queue_empty,
    wait_until,
)

AWKWARD_KEYS = ["a b.txt", "c+d.txt", "100%.txt", "dir/sub/e=f.txt", "ünï/ç 😀.csv", "z.txt"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """eventflow's store on SQLite and on PostgreSQL, where the checkpoint lives."""
    opened = await SqlStore.open(store_url)
    yield opened
    await opened.close()


def poller(server: S3Server, bucket: str, store: SqlStore, **fields: Any) -> BucketPoller:
    """A poller as a fresh process would make it: new objects, the same stored state."""
    config = ObjectStoreConfig.model_validate(server.spec("poll", bucket=bucket, **fields))
    context = SensorContext(state=store.sensor_state("poller", utc_now), clock=utc_now)
    return ObjectStoreSensor("poller", config, context)._poller()


async def new_bucket(server: S3Server) -> str:
    bucket = unique("bkt")
    async with server.client("s3") as s3:
        await s3.create_bucket(Bucket=bucket)
    return bucket


async def test_a_restart_between_listings_reports_only_what_changed(
    s3_server: S3Server, store: SqlStore
) -> None:
    """First listing: nothing (firstRun none); after a restart: one created, changed, removed."""
    bucket = await new_bucket(s3_server)
    await put_many(s3_server, bucket, AWKWARD_KEYS)
    emit = Collector()
    async with s3_server.client("s3") as s3:
        first = await poller(s3_server, bucket, store).cycle(s3, emit)
        assert (first.listed, first.created, first.emitted) == (6, 6, 0)
        await s3.put_object(Bucket=bucket, Key="new one+.csv", Body=b"n")
        await s3.put_object(Bucket=bucket, Key="a b.txt", Body=b"changed content")
        await s3.delete_object(Bucket=bucket, Key="dir/sub/e=f.txt")
        second = await poller(s3_server, bucket, store).cycle(s3, emit)
        third = await poller(s3_server, bucket, store).cycle(s3, emit)
    assert sorted((event.type, event.subject) for event in emit.events) == [
        ("com.amazonaws.s3.ObjectCreated:Changed", "a b.txt"),
        ("com.amazonaws.s3.ObjectCreated:Listed", "new one+.csv"),
        ("com.amazonaws.s3.ObjectRemoved:Unlisted", "dir/sub/e=f.txt"),
    ]
    assert (second.created, second.changed, second.removed) == (1, 1, 1)
    assert (third.created, third.changed, third.removed, third.emitted) == (0, 0, 0, 0)


async def test_first_run_all_reports_every_object_under_the_prefix_once(
    moto: S3Server, store: SqlStore
) -> None:
    """firstRun all: a created event per object under the prefix, matching the suffix."""
    bucket = await new_bucket(moto)
    await put_many(moto, bucket, ["in/a.csv", "in/b.json", "in/c d.csv", "out/e.csv"])
    emit = Collector()
    async with moto.client("s3") as s3:
        await poller(
            moto, bucket, store, prefix="in/", suffix=".csv", poll={"firstRun": "all"}
        ).cycle(s3, emit)
    assert sorted(event.subject or "" for event in emit.events) == ["in/a.csv", "in/c d.csv"]


async def test_a_missing_bucket_is_shown_as_the_problem(moto: S3Server) -> None:
    """Listing a bucket that does not exist: not connected, the problem says what to do."""
    config = ObjectStoreConfig.model_validate(moto.spec("poll", bucket="no-such-bucket-here"))
    sensor = ObjectStoreSensor("s", config, memory_context(), backoff_initial_seconds=0.05)
    emit = Collector()
    async with running(sensor, emit):
        await wait_until(lambda: sensor.problem is not None)
    assert not sensor.connected
    assert sensor.problem == (
        "bucket no-such-bucket-here: the bucket does not exist; create it or fix bucket"
    )
    assert emit.events == []


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_bucket_listed_over_many_pages_is_reported_once_then_found_unchanged(
    ministack: S3Server, store: SqlStore
) -> None:
    """300 objects in pages of 23 (not aligned with the checkpoint's): each reported once,
    then nothing; one removal in the middle of a page is found."""
    bucket = await new_bucket(ministack)
    keys = [f"data/{index:04d}/part {index % 7}+x.csv" for index in range(300)]
    await put_many(ministack, bucket, keys, concurrency=32)
    emit = Collector()
    paged = {"poll": {"pageSize": 23}}
    async with ministack.client("s3") as s3:
        first = await poller(
            ministack, bucket, store, poll={"firstRun": "all", "pageSize": 23}
        ).cycle(s3, emit)
        again = await poller(ministack, bucket, store, **paged).cycle(s3, emit)
        await s3.delete_object(Bucket=bucket, Key=keys[150])
        last = await poller(ministack, bucket, store, **paged).cycle(s3, emit)
    assert (first.listed, first.emitted) == (300, 300)
    assert sorted(event.subject or "" for event in emit.events[:300]) == keys
    assert (again.listed, again.created, again.changed, again.removed) == (300, 0, 0, 0)
    assert (last.removed, [event.subject for event in emit.events[300:]]) == (1, [keys[150]])


@pytest.fixture(scope="session")
def bucket_of_10000(ministack: S3Server) -> tuple[str, list[str]]:
    """A ministack bucket of 10,000 objects, made once per session; tests only read it.

    Puts 64 at a time: ~600 objects/s, 10,000 in ~17 s on an idle machine (one at a time,
    ministack takes ~100/s)."""
    keys = [f"big/{index // 1000:02d}/{index:05d} part+{index % 7}.csv" for index in range(10_000)]

    async def fill() -> str:
        bucket = await new_bucket(ministack)
        await put_many(ministack, bucket, keys, concurrency=64)
        return bucket

    # Not timed: how fast the test server fills a bucket says nothing of eventflow, and a
    # busy host took 76 s where an idle one takes 17; the test's own timeout still bounds it.
    bucket = asyncio.run(fill())
    return bucket, sorted(keys, key=str.encode)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_bucket_of_10000_objects_is_reported_once_and_found_unchanged_after_a_restart(
    ministack: S3Server, store: SqlStore, bucket_of_10000: tuple[str, list[str]]
) -> None:
    """10,000 objects over ten pages: each reported once by the first listing; a new poller
    on the same stored checkpoint (a restart) lists them all and reports nothing."""
    bucket, keys = bucket_of_10000
    emit = Collector()
    async with ministack.client("s3") as s3:
        first = await poller(ministack, bucket, store, poll={"firstRun": "all"}).cycle(s3, emit)
        again = await poller(ministack, bucket, store).cycle(s3, emit)
    assert (first.listed, first.created, first.emitted) == (10_000, 10_000, 10_000)
    assert [event.subject for event in emit.events] == keys
    assert len({event.id for event in emit.events}) == 10_000
    assert (again.listed, again.created, again.changed, again.removed, again.emitted) == (
        10_000,
        0,
        0,
        0,
        0,
    )
