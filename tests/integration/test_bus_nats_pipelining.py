"""The JetStream bus's own publish and pull machinery (nats_publishing.py, nats_pulling.py) and
the dead-letter subject setting, on the machine's NATS at 127.0.0.1:4222 or a server of the
test's own where it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from eventflow.bus.nats import NatsBus
from eventflow.bus.nats_publishing import PubAckMux, PublishFailedError
from eventflow.errors import BusUnavailableError
from eventflow.service import open_bus
from eventflow.settings import BusSettings, Settings
from tests.brokers import own_nats, running
from tests.conftest import free_port
from tests.contract.conftest import (
    NATS_URL,
    isolated_nats_bus,
    make_event,
    nats_connection,
    pumps_on,
)


@pytest.fixture
async def stream() -> AsyncIterator[tuple[Client, str]]:
    """A client and a stream of the test's own on `<stream>.>`, deleted afterwards."""
    client = await nats_connection()
    name = f"MUX_{uuid.uuid4().hex[:12]}"
    await client.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    try:
        yield client, name
    finally:
        await client.jetstream().delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def started_mux(client: Client, **options: float) -> AsyncIterator[PubAckMux]:
    mux = PubAckMux(
        client,
        max_in_flight=int(options.get("max_in_flight", 64)),
        timeout_seconds=options.get("timeout_seconds", 5.0),
    )
    await mux.start()
    try:
        yield mux
    finally:
        await mux.close()


async def test_concurrent_publishes_are_each_settled_by_their_own_puback(
    stream: tuple[Client, str],
) -> None:
    """500 publishes in flight, every 5th to a subject no stream takes: exactly those fail."""
    client, name = stream
    async with started_mux(client, max_in_flight=64) as mux:

        async def publish(number: int) -> str:
            subject = f"nowhere.{name}" if number % 5 == 0 else f"{name}.n"
            try:
                await mux.publish(subject, str(number).encode(), {"Nats-Msg-Id": str(number)})
            except PublishFailedError as error:
                return str(error)
            return "stored"

        outcomes = await asyncio.gather(*(publish(number) for number in range(500)))
        assert mux.pending == 0
    expected = [
        "no stream takes this subject (no responders)" if number % 5 == 0 else "stored"
        for number in range(500)
    ]
    assert outcomes == expected
    info = await client.jetstream().stream_info(name)
    assert info.state.messages == 400
    stored = {(await client.jetstream().get_msg(name, seq)).data for seq in range(1, 401)}
    assert stored == {str(number).encode() for number in range(500) if number % 5}


async def test_publish_refused_by_jetstream_fails_with_the_servers_reason(
    stream: tuple[Client, str],
) -> None:
    """A PubAck carrying an error (wrong expected stream) fails that publish, nothing stored."""
    client, name = stream
    async with started_mux(client) as mux:
        with pytest.raises(PublishFailedError) as raised:
            await mux.publish(f"{name}.n", b"x", {"Nats-Expected-Stream": "OTHER"})
    assert str(raised.value) == "JetStream refused it: expected stream does not match (code 10060)"
    assert (await client.jetstream().stream_info(name)).state.messages == 0


async def test_publish_without_puback_fails_at_its_timeout_and_frees_its_slot() -> None:
    """A listener that never answers: the publish fails after its timeout, the window is free."""
    client = await nats_connection()
    silent = await client.subscribe(f"silent.{uuid.uuid4().hex}")
    try:
        async with started_mux(client, max_in_flight=1, timeout_seconds=0.3) as mux:
            started = time.monotonic()
            with pytest.raises(PublishFailedError) as raised:
                await mux.publish(silent.subject, b"x", {})
            assert 0.3 <= time.monotonic() - started < 1.0
            assert str(raised.value) == "no PubAck within 0.3s"
            assert mux.pending == 0
            with pytest.raises(PublishFailedError):
                await mux.publish(silent.subject, b"x", {})  # the one slot came back
    finally:
        await client.close()


async def test_bus_publish_to_a_deleted_stream_fails_with_a_clear_error() -> None:
    """The stream removed under a started bus: publish says what went wrong and stores nothing."""
    async with isolated_nats_bus() as bus:
        client = await nats_connection()
        try:
            await client.jetstream().delete_stream(bus._stream)
            with pytest.raises(BusUnavailableError) as raised:
                await bus.publish(make_event(1))
            with pytest.raises(NotFoundError):
                await client.jetstream().stream_info(bus._stream)
        finally:
            await client.close()
    assert str(raised.value) == (
        f"NATS at {NATS_URL} did not store the event on '{bus._prefix}.orders' in stream"
        f" '{bus._stream}': no stream takes this subject (no responders); check that"
        " nats-server runs with JetStream and has room, then send the event again"
    )


async def test_server_going_away_fails_pending_publishes_at_once(tmp_path: Path) -> None:
    """kill -9 while PubAcks are awaited: they fail within a second, not at the 30 s timeout."""
    url = f"nats://127.0.0.1:{free_port()}"
    with running(own_nats(int(url.rsplit(":", 1)[1]), tmp_path / "js")) as server:
        bus = NatsBus(url, publish_timeout_seconds=30.0, reconnect_wait_seconds=0.2)
        await bus.start()
        listener = Client()
        try:
            await listener.connect(url, allow_reconnect=False)
            # A subscriber that never answers keeps the publishes waiting for a PubAck.
            silent = await listener.subscribe("silent.subject")
            await listener.flush()
            assert bus._nc is not None
            assert bus._publisher is not None
            await interest_seen_by(bus._nc, silent.subject)
            publisher = bus._publisher

            async def publish() -> str:
                try:
                    await publisher.publish(silent.subject, b"x", {})
                except PublishFailedError as error:
                    return str(error)
                return "stored"

            pending = [asyncio.create_task(publish()) for _ in range(10)]
            async with asyncio.timeout(5):
                while publisher.pending < 10:
                    await asyncio.sleep(0.01)
            server.kill()
            killed_at = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
            assert time.monotonic() - killed_at < 2.0
            assert outcomes == ["the connection dropped before the PubAck came"] * 10
            assert publisher.pending == 0
        finally:
            await listener.close()
            await bus.close()


async def interest_seen_by(client: Client, subject: str) -> None:
    """Wait until `client`'s requests to `subject` reach a subscriber: a server just started
    with JetStream may answer 'no responders' for a moment after another connection's SUB."""
    async with asyncio.timeout(5):
        while True:
            try:
                await client.request(subject, b"probe", timeout=0.05)
            except NoRespondersError:
                continue
            except NatsTimeoutError:
                return


async def test_prefetch_is_bounded_by_the_batch_and_stop_hands_the_rest_back() -> None:
    """A replica that took one event holds at most `fetch_batch`; closing its subscription
    returns the rest to the consumer at once (not after ack_wait) for the other replica."""
    async with (
        isolated_nats_bus(fetch_batch=8, ack_wait_seconds=30.0) as bus,
        pumps_on(bus) as subscribe,
    ):
        for number in range(20):
            await bus.publish(make_event(number))
        first = bus.subscribe("engine")
        taken = await anext(first)
        await taken.ack()
        client = await nats_connection()
        try:
            await asyncio.sleep(0.3)  # time for any further pull to be answered
            info = await client.jetstream().consumer_info(bus._stream, "engine")
            assert (info.num_ack_pending, info.num_pending) == (7, 12)
            await first.aclose()
            second = await subscribe("engine")
            deliveries = await second.take(19, timeout=3)
        finally:
            await client.close()
        assert sorted(delivery.event.id for delivery in deliveries) == sorted(
            f"evt-{number}" for number in range(20) if f"evt-{number}" != taken.event.id
        )
        for delivery in deliveries:
            await delivery.ack()
        assert await bus.drain(3.0) is True


async def test_dead_letter_subject_setting_is_where_dead_letters_go() -> None:
    """bus.dead_letter_subject reaches the NATS bus: its dead-letter stream listens there."""
    tag = uuid.uuid4().hex[:12]
    settings = Settings(
        bus=BusSettings(
            url=NATS_URL,
            stream=f"TEST_{tag}",
            subject_prefix=f"test.{tag}.events",
            dead_letter_subject=f"test.{tag}.graveyard",
            max_deliver=1,
        )
    )
    bus = open_bus(settings)
    assert isinstance(bus, NatsBus)
    client = await nats_connection()
    try:
        await bus.start()
        async with pumps_on(bus) as subscribe:
            pump = await subscribe("engine")
            await bus.publish(make_event(1))
            await (await pump.next()).nak()
            async with asyncio.timeout(5):
                while not (letters := await bus.list_dead_letters()):
                    await asyncio.sleep(0.02)
        info = await client.jetstream().stream_info(f"TEST_{tag}_DLQ")
        assert info.config.subjects == [f"test.{tag}.graveyard"]
        raw = await client.jetstream().get_msg(f"TEST_{tag}_DLQ", letters[0].seq)
        assert raw.subject == f"test.{tag}.graveyard"
    finally:
        await bus.close()
        for name in (f"TEST_{tag}", f"TEST_{tag}_DLQ"):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(name)
        await client.close()


@pytest.mark.parametrize("subject", ["dead letters", "dead.*", "dead.>", "dead..letters", ""])
def test_invalid_dead_letter_subject_is_refused_with_what_is_accepted(subject: str) -> None:
    """A subject with a space, a wildcard or an empty token fails the settings, saying why."""
    with pytest.raises(ValidationError) as raised:
        BusSettings(dead_letter_subject=subject)
    [error] = raised.value.errors()
    assert error["loc"] == ("dead_letter_subject",)
    assert error["msg"] == (
        f"Value error, {subject!r} is not a NATS subject to publish on; use dot-separated"
        " tokens without spaces or wildcards (* >), e.g. eventflow.dead-letters"
    )
