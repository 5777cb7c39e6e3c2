"""The channel between the main process and its intake workers, over a real Unix socket:
publishes answered only once the main process's bus took the event, refusals passed on with
their reason and delay, reloads asked of every worker, and either end going away."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventflow.errors import BusUnavailableError, TemporaryError
from eventflow.events import Event, ReceivedEvent
from eventflow.sensing.limiting import ProcessRateLimits
from eventflow.store.sql import SqlStore
from eventflow.workers.channel import MainEnd, WorkerEnd
from eventflow.workers.store import ChannelSensorState, ChannelWebhooks, serve_store


async def no_store(_: bytes) -> bytes:
    raise AssertionError("no store request is made here")


def received(number: int) -> ReceivedEvent:
    event = Event(id=f"e-{number}", source="/test", type="t", data={"n": number, "text": "ü"})
    return ReceivedEvent(event, "hook", datetime(2026, 12, 2, 4, 0, number % 60, tzinfo=UTC))


class Bus:
    """The main process's bus, as the channel sees it: takes events, or refuses them."""

    def __init__(self) -> None:
        self.events: list[ReceivedEvent] = []
        self.refusal: BusUnavailableError | None = None
        self.gate: asyncio.Event | None = None

    async def publish(self, event: ReceivedEvent) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.refusal is not None:
            raise self.refusal
        self.events.append(event)


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A Unix socket's path must be short: pytest's tmp_path may be too long.
    return Path(tmp_path_factory.mktemp("ch", numbered=True)) / "c.sock"


@pytest.fixture
async def main_end(socket_path: Path) -> AsyncIterator[tuple[MainEnd, Bus]]:
    bus = Bus()
    main = MainEnd(socket_path, bus.publish, no_store)
    await main.start()
    yield main, bus
    await main.close()


async def connected(path: Path, reloads: list[str] | None = None) -> WorkerEnd:
    async def reload() -> list[str]:
        if reloads is not None:
            reloads.append("reloaded")
        return []

    worker = WorkerEnd(path, reload)
    await worker.connect()
    worker.ready()
    return worker


async def test_publishes_arrive_whole_and_in_order(main_end, socket_path):
    _, bus = main_end
    worker = await connected(socket_path)
    events = [received(number) for number in range(200)]
    await asyncio.gather(*(worker.publish(event) for event in events))
    assert bus.events == events
    await worker.close()


async def test_a_publish_returns_only_once_the_bus_took_the_event(main_end, socket_path):
    _, bus = main_end
    bus.gate = asyncio.Event()
    worker = await connected(socket_path)
    publishing = asyncio.create_task(worker.publish(received(1)))
    await asyncio.sleep(0.1)
    assert not publishing.done()
    bus.gate.set()
    await publishing
    assert [event.id for event in bus.events] == ["e-1"]
    await worker.close()


async def test_a_refusal_keeps_its_reason_and_delay(main_end, socket_path):
    _, bus = main_end
    bus.refusal = BusUnavailableError("the bus is full; send the event again shortly", delay=2.5)
    worker = await connected(socket_path)
    with pytest.raises(BusUnavailableError) as refused:
        await worker.publish(received(1))
    assert (str(refused.value), refused.value.delay) == (
        "the bus is full; send the event again shortly",
        2.5,
    )
    assert bus.events == []
    await worker.close()


async def test_the_main_process_going_away_fails_what_is_in_flight(socket_path):
    bus = Bus()
    bus.gate = asyncio.Event()
    main = MainEnd(socket_path, bus.publish, no_store)
    await main.start()
    worker = await connected(socket_path)
    await main.wait_ready(1)
    publishing = asyncio.create_task(worker.publish(received(1)))
    await asyncio.sleep(0.05)
    await main.close()
    with pytest.raises(BusUnavailableError, match="eventflow is stopping; send the event again"):
        await publishing
    await asyncio.wait_for(worker.closed.wait(), 5)
    with pytest.raises(BusUnavailableError):
        await worker.publish(received(2))
    await worker.close()


async def test_reload_is_asked_of_every_worker_and_awaited(main_end, socket_path):
    main, _ = main_end
    first: list[str] = []
    second: list[str] = []
    workers = [await connected(socket_path, first), await connected(socket_path, second)]
    await main.wait_ready(2)
    await main.reload_workers(within_seconds=5)
    assert (first, second) == (["reloaded"], ["reloaded"])
    for worker in workers:
        await worker.close()
    await asyncio.sleep(0.05)
    assert main.ready == 0


async def test_a_worker_that_does_not_answer_a_reload_does_not_hold_the_change(
    main_end, socket_path
):
    main, _ = main_end
    stuck = asyncio.Event()

    async def never() -> list[str]:
        await stuck.wait()
        return []

    worker = WorkerEnd(socket_path, never)
    await worker.connect()
    worker.ready()
    await main.wait_ready(1)
    await asyncio.wait_for(main.reload_workers(within_seconds=0.2), 5)
    stuck.set()
    await worker.close()


async def test_a_peer_sending_garbage_is_disconnected(main_end, socket_path):
    _, bus = main_end
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(struct.pack(">I", 2**31))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert bus.events == []


async def test_a_store_request_that_fails_is_a_temporary_error_with_its_reason(socket_path):
    """The main process's store down: the worker's sensor sees a TemporaryError that says why,
    as it would from a store of its own."""

    async def store_down(_: bytes) -> bytes:
        raise TemporaryError("store sqlite:///x.db: disk I/O error; check that the database is up")

    main = MainEnd(socket_path, Bus().publish, store_down)
    await main.start()
    worker = await connected(socket_path)
    state = ChannelSensorState("hook", worker.ask_store)
    with pytest.raises(TemporaryError) as failed:
        await state.get_many("seen", ["k"])
    assert str(failed.value) == (
        "sensor state, kept by the main process: store sqlite:///x.db: disk I/O error; check"
        " that the database is up"
    )
    await worker.close()
    await main.close()


async def test_registered_webhooks_are_listed_through_the_channel(socket_path, tmp_path):
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'eventflow.db'}")
    now = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    spec = {"path": "acme", "auth": {"preset": "github", "secrets": [{"env": "GH_SECRET"}]}}
    await store.webhooks.create("gh", "acme", spec, now)
    main = MainEnd(
        socket_path,
        Bus().publish,
        serve_store(
            lambda name: store.sensor_state(name, lambda: now),
            lambda: store.webhooks,
            ProcessRateLimits(),
        ),
    )
    await main.start()
    worker = await connected(socket_path)
    [listed] = await ChannelWebhooks(worker.ask_store).list_all()
    assert (listed.name, listed.path, dict(listed.spec)) == ("gh", "acme", spec)
    assert (listed.created_at, listed.updated_at) == (now, now)
    await worker.close()
    await main.close()
    await store.close()
