"""The engine's async shell: bus delivery -> match -> store (event, decisions, runs) -> ack.

The ack comes only after the store committed the runs the event starts (promise 1); a
redelivered event finds its runs already there through the (trigger, dedupe key) constraint
(promise 2). Starting the runs is the run controller's job: the dispatcher hands it the
runs it created.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import structlog

from eventflow.bus.protocol import Delivery, EventBus
from eventflow.engine.catalog import Catalog, new_run_id
from eventflow.errors import ExpressionError
from eventflow.store.records import (
    Decision,
    DispatchItem,
    DispatchResult,
    NewRun,
    RunRecord,
    Store,
)

log = structlog.get_logger()

ENGINE_GROUP = "eventflow-engine"


class RunStarter(Protocol):
    def admit(self, run: RunRecord) -> None: ...


def decide(catalog: Catalog, delivery: Delivery) -> tuple[list[Decision], list[NewRun]]:
    """What the event does: a decision for every trigger the index considered, and the runs."""
    received = delivery.event
    decisions: list[Decision] = []
    runs: list[NewRun] = []
    for verdict in catalog.index.match(received):
        if not verdict.matched:
            decisions.append(Decision(verdict.trigger, False, verdict.reason, None))
            continue
        try:
            run = catalog.rules[verdict.trigger].new_run(verdict.event_name, received, new_run_id())
        except ExpressionError as error:
            decisions.append(Decision(verdict.trigger, True, f"no run started: {error}", None))
            continue
        runs.append(run)
        decisions.append(Decision(verdict.trigger, True, None, run.id))
    return decisions, runs


class Dispatcher:
    """Consumes the bus as one member of the engine's consumer group.

    Deliveries that arrive together are stored together: one transaction (one commit) for
    a burst of up to `max_batch` events, so intake is not bound by a commit per event. If a
    batch fails, its events are retried one by one, so one bad event cannot hold back others.
    """

    def __init__(
        self,
        *,
        bus: EventBus,
        store: Store,
        runs: RunStarter,
        catalog: Callable[[], Catalog],
        clock: Callable[[], datetime],
        retry_delay: float = 1.0,
        max_batch: int = 256,
    ) -> None:
        self._bus = bus
        self._store = store
        self._runs = runs
        self._catalog = catalog
        self._clock = clock
        self._retry_delay = retry_delay
        self._max_batch = max_batch

    async def run(self) -> None:
        ready: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=self._max_batch)

        async def receive() -> None:
            async for delivery in self._bus.subscribe(ENGINE_GROUP):
                await ready.put(delivery)

        receiver = asyncio.create_task(receive(), name="dispatcher-receive")
        try:
            while True:
                batch = [await ready.get()]
                while len(batch) < self._max_batch and not ready.empty():
                    batch.append(ready.get_nowait())
                await self.dispatch(batch)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)

    async def dispatch(self, batch: Sequence[Delivery]) -> None:
        catalog = self._catalog()
        items: list[DispatchItem] = []
        for delivery in batch:
            decisions, runs = decide(catalog, delivery)
            items.append((delivery.event, decisions, runs))
        try:
            results = await self._store.record_dispatches(items, self._clock())
        except Exception as error:
            if len(batch) > 1:
                for delivery, item in zip(batch, items, strict=True):
                    await self._dispatch_one(delivery, item)
                return
            await self._retry_later(batch[0], error)
            return
        for delivery, item, result in zip(batch, items, results, strict=True):
            await self._settle(delivery, item, result)

    async def _dispatch_one(self, delivery: Delivery, item: DispatchItem) -> None:
        try:
            [result] = await self._store.record_dispatches([item], self._clock())
        except Exception as error:
            await self._retry_later(delivery, error)
            return
        await self._settle(delivery, item, result)

    async def _retry_later(self, delivery: Delivery, error: Exception) -> None:
        log.warning(
            "event not stored, will retry",
            event_id=delivery.event.id,
            sensor=delivery.event.sensor,
            error=str(error),
            attempt=delivery.attempt,
            retry_in=self._retry_delay,
        )
        await delivery.nak(self._retry_delay)

    async def _settle(self, delivery: Delivery, item: DispatchItem, result: DispatchResult) -> None:
        """The event and its runs are stored: start the runs, then ack."""
        received, decisions, _ = item
        event = {"event_id": received.id, "sensor": received.sensor}
        if result.created:
            # Bound for what admitting the runs logs too; binding costs each event ~2% of
            # webhook intake, so the events that start nothing name themselves instead.
            with structlog.contextvars.bound_contextvars(**event):
                for run in result.created:
                    log.info("run created", run_id=run.id, trigger=run.trigger)
                    self._runs.admit(run)
        for trigger, run_id in result.existing.items():
            log.info("duplicate event, run exists", trigger=trigger, run_id=run_id, **event)
        if not decisions:
            log.debug("no trigger matched", **event)
        await delivery.ack()
