"""The object-store sensor's sqs mode on real servers: bucket -> notification -> SQS -> bus."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from eventflow.sensing.state import memory_context
from sensors.objectstore import ObjectStoreConfig, ObjectStoreSensor
from sensors.objectstore.listing import LISTING
from sensors.objectstore.polling import INITIALIZED, POLL
from sensors.objectstore.reporting import POISON_TYPE
from tests.s3_servers import (  # noqa: F401  # registers the server fixtures
    Collector,
    S3Server,
    aws_environment_fixture,
    ministack_fixture,
    moto_fixture,
    notifying_bucket,
    queue_depth,
    running,
    s3_server_fixture,
    send_raw,
    unique,
    wait_queue_empty,
    wait_until,
)

AWKWARD_KEYS = ["a b.txt", "c+d.txt", "100%.txt", "dir/sub/e=f.txt", "ünï/ç 😀.csv"]


def sensor_for(
    server: S3Server, queue_url: str, context: Any = None, **fields: Any
) -> ObjectStoreSensor:
    sqs = {"queueUrl": queue_url, "waitSeconds": 1, **fields.pop("sqs", {})}
    config = ObjectStoreConfig.model_validate(server.spec("sqs", sqs=sqs, **fields))
    return ObjectStoreSensor(
        unique("sensor"), config, context or memory_context(), backoff_initial_seconds=0.05
    )


def record(key: str, sequencer: str, *, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    """An S3 notification of one change, as AWS writes it."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2024-05-01T12:00:00.000Z",
                "eventName": event,
                "responseElements": {"x-amz-request-id": f"REQ{sequencer}"},
                "s3": {
                    "bucket": {"name": "raw-data"},
                    "object": {"key": key, "size": 3, "eTag": "e", "sequencer": sequencer},
                },
            }
        ]
    }


async def test_put_copy_and_delete_of_awkward_keys_become_events_with_exact_keys(
    s3_server: S3Server,
) -> None:
    """Spaces, +, %, /, = and unicode keys arrive exactly as put, on both key encodings."""
    async with notifying_bucket(s3_server) as wired:
        async with s3_server.client("s3") as s3:
            for key in AWKWARD_KEYS:
                await s3.put_object(Bucket=wired.bucket, Key=key, Body=b"abc")
            await s3.copy_object(
                Bucket=wired.bucket,
                Key="copies/a b+c.txt",
                CopySource={"Bucket": wired.bucket, "Key": AWKWARD_KEYS[0]},
            )
            await s3.delete_object(Bucket=wired.bucket, Key=AWKWARD_KEYS[1])
        sensor = sensor_for(s3_server, wired.queue_url, bucket=wired.bucket)
        emit = Collector()
        async with running(sensor, emit):
            events = await emit.wait_for(7)
            await wait_queue_empty(s3_server, wired.queue_url)
    got = sorted((event.type, event.subject) for event in events)
    assert got == sorted(
        [("com.amazonaws.s3.ObjectCreated:Put", key) for key in AWKWARD_KEYS]
        + [
            ("com.amazonaws.s3.ObjectCreated:Copy", "copies/a b+c.txt"),
            ("com.amazonaws.s3.ObjectRemoved:Delete", "c+d.txt"),
        ]
    )
    created = next(event for event in events if event.subject == "ünï/ç 😀.csv")
    assert created.source == f"com.amazonaws.s3.us-east-1.{wired.bucket}"
    assert created.data["size"] == 3
    assert sensor.counts.skipped == 1  # the s3:TestEvent
    assert sensor.connected
    assert sensor.problem is None


async def test_sns_wrapped_notifications_are_unwrapped(s3_server: S3Server) -> None:
    """A bucket notifying a topic that feeds the queue gives the same events."""
    async with notifying_bucket(s3_server, via_sns=True) as wired:
        async with s3_server.client("s3") as s3:
            await s3.put_object(Bucket=wired.bucket, Key="in/x y.csv", Body=b"1")
        emit = Collector()
        async with running(sensor_for(s3_server, wired.queue_url), emit):
            [event] = await emit.wait_for(1)
    assert (event.type, event.subject) == ("com.amazonaws.s3.ObjectCreated:Put", "in/x y.csv")


async def test_a_message_the_bus_refused_comes_back_and_a_repeat_is_dropped(moto: S3Server) -> None:
    """Refused: left in the queue and redelivered after its visibility -> one event; the same
    record arriving again in another message is dropped by the dedupe window."""
    async with notifying_bucket(moto) as wired:
        async with moto.client("s3") as s3:
            await s3.put_object(Bucket=wired.bucket, Key="once.csv", Body=b"1")
        sensor = sensor_for(moto, wired.queue_url, sqs={"visibilityTimeout": 30})
        emit = Collector()
        emit.fail_next = 1
        async with running(sensor, emit):
            [event] = await emit.wait_for(1)
            await wait_queue_empty(moto, wired.queue_url)
            await send_raw(
                moto, wired.queue_url, event.data["record"] and {"Records": [event.data["record"]]}
            )
            await wait_until(lambda: sensor.counts.duplicates >= 1)
    assert [e.subject for e in emit.events] == ["once.csv"]


async def test_an_older_change_of_a_key_after_a_newer_one_is_not_emitted(moto: S3Server) -> None:
    """Sequencer 0B then 0A for one key: only 0B; 0A then 0B: both, the newer last."""
    queue = unique("q")
    async with moto.client("sqs") as sqs:
        queue_url = (await sqs.create_queue(QueueName=queue))["QueueUrl"]
    for body in (record("k", "0B"), record("k", "0A"), record("j", "0A"), record("j", "0B")):
        await send_raw(moto, queue_url, body)
    sensor = sensor_for(moto, queue_url, keyEncoding="url-plus", sqs={"maxMessages": 1})
    emit = Collector()
    async with running(sensor, emit):
        await emit.wait_for(3)
        await wait_until(lambda: sensor.counts.stale >= 1)
    assert [(e.subject, e.data["sequencer"]) for e in emit.events] == [
        ("k", "0B"),
        ("j", "0A"),
        ("j", "0B"),
    ]


async def test_poison_messages_are_reported_once_and_deleted(moto: S3Server) -> None:
    """Not JSON, not a notification, a record without a key: a poison event each, deleted."""
    queue_url = await _queue(moto)
    keyless = copy.deepcopy(record("k", "0A"))
    del keyless["Records"][0]["s3"]["object"]["key"]
    for body in ("not json", json.dumps({"hello": 1}), json.dumps(keyless)):
        await send_raw(moto, queue_url, body)
    sensor = sensor_for(moto, queue_url)
    emit = Collector()
    async with running(sensor, emit):
        events = await emit.wait_for(3)
        await wait_queue_empty(moto, queue_url)
    assert {event.type for event in events} == {POISON_TYPE}
    assert sorted(event.data["reason"] for event in events) == [
        "Records[0].s3.object.key: missing or empty; expected a non-empty string",
        "message body: not JSON (Expecting value at 1:1)",
        "message body: not an object-store notification (top-level fields: 'hello'); expected"
        " an S3 notification ('Records'), an SNS envelope ('Type' and 'Message'), an"
        " EventBridge event ('detail-type' and 'detail') or an s3:TestEvent",
    ]
    assert sensor.counts.poisoned == 3
    assert sensor.counts.emitted == 0


async def test_poison_goes_to_the_dead_letter_queue_when_one_is_named(moto: S3Server) -> None:
    """With deadLetterQueueUrl the body moves there, with its reason, and nothing is emitted."""
    queue_url, dead_url = await _queue(moto), await _queue(moto)
    await send_raw(moto, queue_url, "not json")
    sensor = sensor_for(moto, queue_url, sqs={"deadLetterQueueUrl": dead_url})
    emit = Collector()
    async with running(sensor, emit):
        await wait_until(lambda: sensor.counts.poisoned >= 1)
    async with moto.client("sqs") as sqs:
        reply = await sqs.receive_message(
            QueueUrl=dead_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
        )
    [message] = reply["Messages"]
    assert message["Body"] == "not json"
    reason = message["MessageAttributes"]["EventflowPoisonReason"]["StringValue"]
    assert reason == "message body: not JSON (Expecting value at 1:1)"
    assert emit.events == []


async def test_a_missing_queue_is_shown_as_the_problem_and_the_sensor_recovers(
    moto: S3Server,
) -> None:
    """Until the queue exists: not connected, the problem says what to do; then it reads."""
    name = unique("q")
    config = ObjectStoreConfig.model_validate(
        moto.spec("sqs", sqs={"queueName": name, "waitSeconds": 1})
    )
    sensor = ObjectStoreSensor("s", config, memory_context(), backoff_initial_seconds=0.05)
    emit = Collector()
    async with running(sensor, emit):
        await wait_until(lambda: sensor.problem is not None)
        assert not sensor.connected
        assert sensor.problem == (
            f"queue {name}: the queue does not exist (AWS.SimpleQueueService.NonExistentQueue);"
            " create it or fix sqs.queueUrl"
        )
        async with moto.client("sqs") as sqs:
            url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        await send_raw(moto, url, record("k", "0A"))
        [event] = await emit.wait_for(1)
    assert event.subject == "k"
    assert sensor.connected
    assert sensor.problem is None


async def test_reconcile_listing_reports_what_no_notification_told_and_nothing_twice(
    ministack: S3Server,
) -> None:
    """An object put while the bucket notifies nobody is reported by the reconcile listing
    (ObjectCreated:Listed); one already notified is not reported again by later listings."""
    async with notifying_bucket(ministack) as wired:
        sensor = sensor_for(
            ministack,
            wired.queue_url,
            bucket=wired.bucket,
            sqs={"reconcileSeconds": 0.2, "reconcileGraceSeconds": 1.5},
        )
        state = sensor.reporter.state
        emit = Collector()
        async with running(sensor, emit), ministack.client("s3") as s3:
            # The first listing, at start, records the (empty) bucket without events.
            await wait_until(lambda: sensor.health.connected)
            async with asyncio.timeout(10):
                while await state.get(POLL, INITIALIZED) is None:
                    await asyncio.sleep(0.05)
            await s3.put_object(Bucket=wired.bucket, Key="notified a+b.csv", Body=b"12")
            await emit.wait_for(1)
            await wait_queue_empty(ministack, wired.queue_url)
            await s3.put_bucket_notification_configuration(
                Bucket=wired.bucket, NotificationConfiguration={}
            )
            await s3.put_object(Bucket=wired.bucket, Key="silent c=d.csv", Body=b"345")
            events = await emit.wait_for(2)
            # Several more listings (each between two 1 s receives) find nothing new.
            await asyncio.sleep(3.5)
        assert await queue_depth(ministack, wired.queue_url) == 0
    assert [(event.type, event.subject) for event in emit.events] == [
        ("com.amazonaws.s3.ObjectCreated:Put", "notified a+b.csv"),
        ("com.amazonaws.s3.ObjectCreated:Listed", "silent c=d.csv"),
    ]
    assert events[1].data["size"] == 3
    listed = dict(await state.scan(LISTING))
    assert sorted(listed) == ["notified a+b.csv", "silent c=d.csv"]


async def _queue(server: S3Server) -> str:
    async with server.client("sqs") as sqs:
        return str((await sqs.create_queue(QueueName=unique("q")))["QueueUrl"])
