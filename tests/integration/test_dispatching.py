"""The dispatcher: deliveries are stored with their runs before they are acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventflow.bus.memory import MemoryBus
from eventflow.engine.catalog import Catalog
from eventflow.engine.dispatching import Dispatcher
from eventflow.events import Event, ReceivedEvent
from eventflow.resources.validation import load_resources
from eventflow.sensing.discovery import discover_plugins
from eventflow.store.records import DispatchItem, DispatchResult, RunRecord
from eventflow.store.sql import SqlStore
from tests.conftest import EXAMPLES


class FailingStore:
    """A real store whose first `failures` writes of a dispatch fail, as a lost database would."""

    def __init__(self, store: SqlStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls: list[int] = []

    async def record_dispatches(
        self, batch: Sequence[DispatchItem], now: datetime
    ) -> list[DispatchResult]:
        self.calls.append(len(batch))
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database is gone")
        return await self.store.record_dispatches(batch, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class Admitted:
    def __init__(self) -> None:
        self.runs: list[RunRecord] = []

    def admit(self, run: RunRecord) -> None:
        self.runs.append(run)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path}/eventflow.db")
    yield opened
    await opened.close()


def upload(number: int) -> ReceivedEvent:
    data = {"key": f"f{number}.csv", "size": 10, "etag": f"e{number}"}
    event = Event(id=f"e{number}", source="/s", type="com.example.object.created", data=data)
    return ReceivedEvent(event, "uploads", datetime.now(UTC))


async def run_dispatcher(bus: MemoryBus, store: Any, admitted: Admitted, until: int) -> None:
    catalog = Catalog.build(load_resources([EXAMPLES], discover_plugins()))
    dispatcher = Dispatcher(
        bus=bus,
        store=store,
        runs=admitted,
        catalog=lambda: catalog,
        clock=lambda: datetime.now(UTC),
        retry_delay=0.01,
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            while len(admitted.runs) < until:
                await asyncio.sleep(0.01)
        assert await bus.drain(5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_burst_is_stored_in_one_batch_and_every_run_admitted(store):
    """Events queued together are stored in one call, and each starts its run once."""
    bus = MemoryBus()
    for number in range(20):
        await bus.publish(upload(number))
    admitted = Admitted()
    failing = FailingStore(store, failures=0)
    await run_dispatcher(bus, failing, admitted, until=20)
    assert failing.calls == [20]
    assert sorted(run.event_id for run in admitted.runs) == sorted(f"e{n}" for n in range(20))


async def test_store_failure_keeps_the_events_until_they_are_stored(store):
    """A failed write naks the events; they come back and their runs are created once."""
    bus = MemoryBus()
    for number in range(3):
        await bus.publish(upload(number))
    admitted = Admitted()
    failing = FailingStore(store, failures=2)
    await run_dispatcher(bus, failing, admitted, until=3)
    # the batch failed, then the first event alone failed; the rest went one by one
    assert failing.calls[:2] == [3, 1]
    assert len(admitted.runs) == 3
    assert len(await store.list_runs()) == 3
    assert (await store.get_event("e0")) is not None


async def test_redelivered_event_starts_no_second_run(store):
    """The same event delivered twice is stored once and starts one run."""
    bus = MemoryBus()
    await bus.publish(upload(1))
    await bus.publish(upload(1))
    admitted = Admitted()
    await run_dispatcher(bus, FailingStore(store, failures=0), admitted, until=1)
    await asyncio.sleep(0.05)
    assert len(admitted.runs) == 1
    assert len(await store.list_runs()) == 1
