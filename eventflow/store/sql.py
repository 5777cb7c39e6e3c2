"""SqlStore: the Store on SQLAlchemy 2, over SQLite (pysqlite on threads) or PostgreSQL
(asyncpg).

Opening a store migrates its schema to the newest alembic revision. Every call is one
transaction, run whole by a `runner` (one event-loop hop on SQLite) with the queries of
`operations`; runs are keyed by (trigger, dedupe_key) with a unique constraint, so a
redelivered event, or two replicas dispatching one event at once, start one run. Each store
writes as one replica (its `Lease`): the runs it creates or claims are leased to it, and it
refuses to change a run leased to another. This module checks what needs no database and does
not decide what to run or when: it keeps what the engine and run controller tell it.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from functools import partial

import structlog
from sqlalchemy import select

from eventflow.events import ReceivedEvent
from eventflow.store import migrations, tables
from eventflow.store.operations import Operations, check_step_names
from eventflow.store.records import (
    DEFAULT_LEASE_SECONDS,
    RUN_STATES,
    UNFINISHED_RUN_STATES,
    Decision,
    DispatchItem,
    DispatchResult,
    EventRecord,
    Lease,
    NewRun,
    Renewal,
    RunRecord,
    StepLog,
    StepRecord,
    aware_utc,
)
from eventflow.store.runner import Runner, connect
from eventflow.store.sensorstate import SqlSensorState
from eventflow.store.webhooks import SqlWebhooks


def _check_run_state(state: str, now: datetime) -> datetime:
    """`now` in UTC when `state` is a run state; a ValueError naming the bad one otherwise."""
    if state not in RUN_STATES:
        raise ValueError(f"state: {state!r} is not a run state; use one of {RUN_STATES}")
    return aware_utc(now, "now")


def _check_limit(limit: int, what: str) -> None:
    if limit < 1:
        raise ValueError(f"limit: {limit} is not a positive number of {what}")


EMBEDDED_REPLICA = "embedded"


def default_replica_id(dialect: str) -> str:
    """SQLite is one process's store, so it is one replica whose restart takes its runs back
    at once; on PostgreSQL each process is a new replica: host, pid and a random part, so
    that a pid reused in another container is not taken for the dead one."""
    if dialect == "sqlite":
        return EMBEDDED_REPLICA
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class SqlStore:
    """The Store on a SQL database; open it with `await SqlStore.open(url)`."""

    def __init__(self, runner: Runner, lease: Lease) -> None:
        self._runner = runner
        self._lease = lease
        self._operations = Operations(runner.dialect, lease)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        replica_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> SqlStore:
        """Connect, create the SQLite file's directory if needed, and migrate to head; write
        as `replica_id` (default: `default_replica_id`) with leases of `lease_seconds`."""
        parsed = migrations.parse_url(url)
        runner = connect(parsed)
        try:
            lease = Lease(replica_id or default_replica_id(runner.dialect), lease_seconds)
            await runner.write_bulk(migrations.upgrade)
        except BaseException:
            await runner.close()
            raise
        structlog.get_logger().info(
            "store opened",
            url=parsed.render_as_string(hide_password=True),
            replica=lease.owner,
            lease_seconds=lease.seconds,
        )
        return cls(runner, lease)

    @property
    def lease(self) -> Lease:
        return self._lease

    async def close(self) -> None:
        await self._runner.close()

    async def ping(self) -> None:
        await self._runner.read(self._operations.ping)

    def sensor_state(self, sensor: str, clock: Callable[[], datetime]) -> SqlSensorState:
        """The keys and values the sensor named `sensor` keeps here."""
        return SqlSensorState(self._runner, sensor, clock)

    @property
    def webhooks(self) -> SqlWebhooks:
        """The webhook endpoints registered through the REST API."""
        return SqlWebhooks(self._runner)

    async def record_dispatch(
        self,
        event: ReceivedEvent,
        decisions: Sequence[Decision],
        runs: Sequence[NewRun],
        now: datetime,
    ) -> DispatchResult:
        [result] = await self.record_dispatches([(event, decisions, runs)], now)
        return result

    async def record_dispatches(
        self, batch: Sequence[DispatchItem], now: datetime
    ) -> list[DispatchResult]:
        """record_dispatch for several events in ONE transaction: one commit for a burst."""
        now = aware_utc(now, "now")
        return await self._runner.write(
            partial(self._operations.record_dispatches, batch=batch, now=now)
        )

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._runner.read(partial(self._operations.get_run, run_id=run_id))

    async def list_runs(
        self, *, limit: int = 50, state: str | None = None, trigger: str | None = None
    ) -> list[RunRecord]:
        _check_limit(limit, "runs")
        runs = tables.runs
        query = select(runs)
        if state is not None:
            query = query.where(runs.c.state == state)
        if trigger is not None:
            query = query.where(runs.c.trigger == trigger)
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        return await self._runner.read(partial(self._operations.runs, query=query))

    async def unfinished_runs(self) -> list[RunRecord]:
        runs = tables.runs
        query = (
            select(runs)
            .where(runs.c.state.in_(UNFINISHED_RUN_STATES))
            .order_by(runs.c.created_at, runs.c.id)
        )
        return await self._runner.read(partial(self._operations.runs, query=query))

    async def count_runs(self, trigger: str | None = None) -> dict[str, int]:
        counted = await self._runner.read(partial(self._operations.count_runs, trigger=trigger))
        return {state: counted.get(state, 0) for state in RUN_STATES}

    async def claim_runs(self, now: datetime, limit: int) -> list[RunRecord]:
        _check_limit(limit, "runs")
        now = aware_utc(now, "now")
        return await self._runner.write(partial(self._operations.claim_runs, now=now, limit=limit))

    async def renew_leases(self, run_ids: Collection[str], now: datetime) -> Renewal:
        now = aware_utc(now, "now")
        if not run_ids:
            return Renewal(held=frozenset(), cancel_requested=frozenset())
        return await self._runner.write(
            partial(self._operations.renew_leases, run_ids=list(run_ids), now=now)
        )

    async def release_runs(self, run_ids: Collection[str] | None = None) -> None:
        if run_ids is None:
            await self._runner.write(self._operations.release_all_runs)
        elif run_ids:
            await self._runner.write(partial(self._operations.release_runs, run_ids=list(run_ids)))

    async def save_progress(
        self,
        run_id: str,
        *,
        steps: Sequence[StepRecord] = (),
        logs: Sequence[StepLog] = (),
        run_state: tuple[str, str | None] | None = None,
        now: datetime,
    ) -> None:
        check_step_names(run_id, steps)
        if run_state is not None:
            now = _check_run_state(run_state[0], now)
        await self._runner.write(
            partial(
                self._operations.save_progress,
                run_id=run_id,
                steps=steps,
                logs=logs,
                run_state=run_state,
                now=now,
            )
        )

    async def set_run_state(
        self, run_id: str, state: str, *, reason: str | None, now: datetime
    ) -> None:
        now = _check_run_state(state, now)
        await self._runner.write(
            partial(
                self._operations.set_run_state, run_id=run_id, state=state, reason=reason, now=now
            )
        )

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        return await self._runner.write(partial(self._operations.request_cancel, run_id=run_id))

    async def save_steps(self, run_id: str, steps: Sequence[StepRecord]) -> None:
        check_step_names(run_id, steps)
        if steps:
            await self._runner.write(
                partial(self._operations.save_steps, run_id=run_id, steps=steps)
            )

    async def save_step_log(self, run_id: str, step: str, attempt: int, text: str) -> None:
        log = StepLog(step=step, attempt=attempt, text=text)
        await self._runner.write(
            partial(self._operations.save_step_logs, run_id=run_id, logs=[log])
        )

    async def get_step_log(self, run_id: str, step: str, attempt: int | None = None) -> str | None:
        return await self._runner.read(
            partial(self._operations.get_step_log, run_id=run_id, step=step, attempt=attempt)
        )

    async def get_event(self, event_id: str, sensor: str | None = None) -> EventRecord | None:
        events = tables.events
        query = select(events).where(events.c.id == event_id)
        if sensor is not None:
            query = query.where(events.c.sensor == sensor)
        query = query.order_by(events.c.received_at, events.c.sensor).limit(1)
        found = await self._runner.read(partial(self._operations.events, query=query))
        return found[0] if found else None

    async def list_events(self, *, limit: int = 50) -> list[EventRecord]:
        _check_limit(limit, "events")
        events = tables.events
        query = (
            select(events).order_by(events.c.received_at.desc(), events.c.id.desc()).limit(limit)
        )
        return await self._runner.read(partial(self._operations.events, query=query))
