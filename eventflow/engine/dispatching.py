"""The engine's async shell: bus delivery -> match -> store (event, decisions, runs) -> ack.

The ack comes only after the store committed the runs the event starts (promise 1); a
redelivered event finds its runs already there through the (trigger, dedupe key) constraint
(promise 2). Starting the runs is the run controller's job: the dispatcher hands it the
runs it created.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import structlog

from eventflow.bus.protocol import Delivery, EventBus
from eventflow.engine.catalog import Catalog, new_run_id
from eventflow.errors import ExpressionError
from eventflow.store.records import Decision, NewRun, RunRecord, Store

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
    """Consumes the bus as one member of the engine's consumer group."""

    def __init__(
        self,
        *,
        bus: EventBus,
        store: Store,
        runs: RunStarter,
        catalog: Callable[[], Catalog],
        clock: Callable[[], datetime],
        retry_delay: float = 1.0,
    ) -> None:
        self._bus = bus
        self._store = store
        self._runs = runs
        self._catalog = catalog
        self._clock = clock
        self._retry_delay = retry_delay

    async def run(self) -> None:
        async for delivery in self._bus.subscribe(ENGINE_GROUP):
            await self.dispatch(delivery)

    async def dispatch(self, delivery: Delivery) -> None:
        received = delivery.event
        with structlog.contextvars.bound_contextvars(event_id=received.id, sensor=received.sensor):
            decisions, runs = decide(self._catalog(), delivery)
            try:
                result = await self._store.record_dispatch(received, decisions, runs, self._clock())
            except Exception as error:
                log.warning(
                    "event not stored, will retry",
                    error=str(error),
                    attempt=delivery.attempt,
                    retry_in=self._retry_delay,
                )
                await delivery.nak(self._retry_delay)
                return
            for run in result.created:
                log.info("run created", run_id=run.id, trigger=run.trigger)
                self._runs.admit(run)
            for trigger, run_id in result.existing.items():
                log.info("duplicate event, run exists", trigger=trigger, run_id=run_id)
            if not decisions:
                log.debug("no trigger matched")
            await delivery.ack()
