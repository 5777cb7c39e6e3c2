"""S3/SQS/SNS servers on loopback for the object-store sensor's tests: ministack and moto.

Both are started once per test process (session scope) on a free port; each test makes its
own bucket and queue with unique names. ministack sends keys unencoded in its notifications
(as Ceph RGW does) and moto URL-encodes them (as AWS does), so running a case on both covers
both key encodings. Credentials are the fixed test ones, given through the environment as the
AWS chain reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from eventflow.errors import BusUnavailableError
from eventflow.events import Event, ReceivedEvent
from tests.conftest import free_port

REGION = "us-east-1"
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
BIN = Path(sys.executable).parent


@functools.cache
def _session() -> AioSession:
    # A session loads botocore's service models once; a new one per client costs ~0.3 s.
    return AioSession()


@dataclass(frozen=True)
class S3Server:
    """One running server: its endpoint and the key encoding its notifications use."""

    name: str
    url: str
    key_encoding: str

    def client(self, service: str, connections: int = 10) -> Any:
        """`async with server.client("s3") as s3:` a client with the test credentials."""
        return _session().create_client(
            service,  # type: ignore[call-overload]
            config=AioConfig(max_pool_connections=connections),
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def spec(self, mode: str, **fields: Any) -> dict[str, Any]:
        """A `spec.objectstore` for this server."""
        return {
            "mode": mode,
            "endpointUrl": self.url,
            "region": REGION,
            "pathStyle": True,
            "keyEncoding": self.key_encoding,
            **fields,
        }


def _start(
    command: list[str], env: dict[str, str], health: str, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"{command[0]} did not answer {health} in 30 s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _binary(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


@pytest.fixture(scope="session", name="aws_environment")
def aws_environment_fixture() -> Iterator[None]:
    """The test credentials in the environment, where the sensor's AWS chain finds them."""
    saved = {name: os.environ.get(name) for name in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", name="ministack")
def ministack_fixture(
    tmp_path_factory: pytest.TempPathFactory, aws_environment: None
) -> Iterator[S3Server]:
    """ministack on a free port: S3, SQS and SNS with real bucket notifications (raw keys)."""
    port = free_port()
    log = tmp_path_factory.mktemp("ministack") / "ministack.log"
    # TMPDIR: where ministack writes its pid file; LOG_LEVEL: no line per request.
    env = {
        "BIND_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "TMPDIR": str(log.parent),
        "LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    process = _start([_binary("ministack")], env, f"{url}/_ministack/health", log)
    yield S3Server("ministack", url, "raw")
    _stop(process)


@pytest.fixture(scope="session", name="moto")
def moto_fixture(
    tmp_path_factory: pytest.TempPathFactory, aws_environment: None
) -> Iterator[S3Server]:
    """moto_server on a free port: S3, SQS and SNS, notifications with URL-encoded keys."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    url = f"http://127.0.0.1:{port}"
    process = _start(
        [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)], {}, f"{url}/moto-api/", log
    )
    yield S3Server("moto", url, "url-plus")
    _stop(process)


@pytest.fixture(params=["ministack", "moto"], name="s3_server")
def s3_server_fixture(request: pytest.FixtureRequest) -> S3Server:
    """Each S3-compatible test server in turn."""
    server: S3Server = request.getfixturevalue(request.param)
    return server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Wired:
    bucket: str
    queue_url: str
    queue_arn: str


@asynccontextmanager
async def notifying_bucket(server: S3Server, *, via_sns: bool = False) -> AsyncIterator[Wired]:
    """A new bucket whose object changes are notified to a new queue (through a topic if
    `via_sns`); the s3:TestEvent the configuration causes is left in the queue."""
    bucket, queue = unique("bkt"), unique("q")
    async with server.client("s3") as s3, server.client("sqs") as sqs:
        queue_url = (await sqs.create_queue(QueueName=queue))["QueueUrl"]
        attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        queue_arn = attributes["Attributes"]["QueueArn"]
        await s3.create_bucket(Bucket=bucket)
        events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
        if via_sns:
            async with server.client("sns") as sns:
                topic = (await sns.create_topic(Name=unique("t")))["TopicArn"]
                await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
            notification = {"TopicConfigurations": [{"TopicArn": topic, "Events": events}]}
        else:
            notification = {"QueueConfigurations": [{"QueueArn": queue_arn, "Events": events}]}
        await s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=notification
        )
        yield Wired(bucket, queue_url, queue_arn)


async def put_many(server: S3Server, bucket: str, keys: list[str], concurrency: int = 64) -> None:
    """Put one small object under each key, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    async with server.client("s3", connections=concurrency) as s3:

        async def put(key: str) -> None:
            async with gate:
                await s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

        await asyncio.gather(*(put(key) for key in keys))


async def send_raw(server: S3Server, queue_url: str, body: dict[str, Any] | str) -> None:
    """Send a message body to the queue as a store would."""
    text = body if isinstance(body, str) else json.dumps(body)
    async with server.client("sqs") as sqs:
        await sqs.send_message(QueueUrl=queue_url, MessageBody=text)


class Collector:
    """An `emit` that keeps what it is given; `fail_next` makes calls raise as a down bus."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_next = 0
        self._arrived = asyncio.Condition()

    async def __call__(self, event: Event) -> ReceivedEvent:
        if self.fail_next:
            self.fail_next -= 1
            raise BusUnavailableError("bus down for the test", delay=1.0)
        async with self._arrived:
            self.events.append(event)
            self._arrived.notify_all()
        return ReceivedEvent(event, "test", datetime.now(UTC))

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Event]:
        """The events, once there are at least `count` of them."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.events) >= count)
        return list(self.events)


@asynccontextmanager
async def running(sensor: Any, emit: Collector) -> AsyncIterator[None]:
    """Run `sensor` in the background for the block; cancel it after."""
    task = asyncio.create_task(sensor.run(emit), name=f"sensor-{sensor.name}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def queue_depth(server: S3Server, queue_url: str) -> int:
    """Messages in the queue, visible or in flight."""
    async with server.client("sqs") as sqs:
        reply = await sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    return sum(int(value) for value in reply["Attributes"].values())


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `condition()` holds; fail the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def wait_queue_empty(server: S3Server, queue_url: str, timeout: float = 10.0) -> None:
    """Return once the queue holds no message, visible or in flight."""
    async with asyncio.timeout(timeout):
        while await queue_depth(server, queue_url):
            await asyncio.sleep(0.05)
