"""SqlStore: the Store on SQLAlchemy 2 async, over SQLite (aiosqlite) or PostgreSQL (asyncpg).

Opening a store migrates its schema to the newest alembic revision. Every write is one
transaction; runs are keyed by (trigger, dedupe_key) with a unique constraint, so a
redelivered event, or two replicas dispatching one event at once, start one run. This module
does not decide what to run or when: it keeps what the engine and run controller tell it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Select, Table, and_, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventflow.errors import TemporaryError
from eventflow.events import ReceivedEvent
from eventflow.store import migrations, tables
from eventflow.store.records import (
    RUN_STATES,
    TERMINAL_RUN_STATES,
    UNFINISHED_RUN_STATES,
    Decision,
    DispatchItem,
    DispatchResult,
    EventRecord,
    NewRun,
    RunRecord,
    StepLog,
    StepRecord,
    aware_utc,
)

_STEP_FIELDS = ("state", "attempt", "started_at", "finished_at", "exit_code", "reason")
_STEP_DATA = ("outputs", "log_tail")


class SqlStore:
    """The Store on a SQLAlchemy async engine; open it with `await SqlStore.open(url)`."""

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self._engine = engine
        self._where = url.render_as_string(hide_password=True)
        # SQLite: writers take the lock at BEGIN, so two writers queue instead of failing.
        # PostgreSQL: a reader's statements share one snapshot (runs and their steps agree).
        self._writer = engine.execution_options(eventflow_write=True)
        # SQLite has one writer at a time, and a writer that finds the file locked sleeps in
        # SQLite's busy handler (1 ms, 2 ms, ... 100 ms). Queueing this process's writers here
        # instead keeps a busy moment from turning into tens of milliseconds per write.
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._reader = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """Connect, create the SQLite file's directory if needed, and migrate to head."""
        parsed = migrations.parse_url(url)
        engine = migrations.create_engine(parsed)
        store = cls(engine, parsed)
        try:
            async with store._transaction(write=True) as connection:
                await migrations.upgrade(connection)
        except BaseException:
            await engine.dispose()
            raise
        structlog.get_logger().info("store opened", url=store._where)
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._transaction() as connection:
            await connection.execute(select(literal(1)))

    @contextlib.asynccontextmanager
    async def _transaction(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        if write and self._write_lock is not None:
            async with self._write_lock, self._begin(self._writer) as connection:
                yield connection
        else:
            async with self._begin(self._writer if write else self._reader) as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def _begin(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        try:
            async with engine.begin() as connection:
                yield connection
        except (OperationalError, InterfaceError) as error:
            raise TemporaryError(
                f"store {self._where}: {error.orig}; check that the database is up"
            ) from error
        except OSError as error:
            raise TemporaryError(
                f"store {self._where}: {error}; check that the database is up and reachable"
            ) from error

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

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
        async with self._transaction(write=True) as connection:
            return [
                await self._record_one(connection, event, decisions, runs, now)
                for event, decisions, runs in batch
            ]

    async def _record_one(
        self,
        connection: AsyncConnection,
        event: ReceivedEvent,
        decisions: Sequence[Decision],
        runs: Sequence[NewRun],
        now: datetime,
    ) -> DispatchResult:
        received_at = aware_utc(event.received_at, "event.received_at")
        created: list[RunRecord] = []
        existing: dict[str, str] = {}
        resolved: dict[str, str] = {}
        await connection.execute(
            self._insert(tables.events)
            .values(
                id=event.id,
                sensor=event.sensor,
                type=event.event.type,
                source=event.event.source,
                subject=event.event.subject,
                received_at=received_at,
                document=event.event.to_dict(),
            )
            .on_conflict_do_nothing(index_elements=["id", "sensor"])
        )
        for run in runs:
            record = await self._insert_run(connection, run, event.id, now)
            if record is None:
                key = and_(
                    tables.runs.c.trigger == run.trigger,
                    tables.runs.c.dedupe_key == run.dedupe_key,
                )
                found = await connection.scalar(select(tables.runs.c.id).where(key))
                existing[run.trigger] = resolved[run.id] = str(found)
            else:
                created.append(record)
        if decisions:
            await connection.execute(
                self._insert(tables.decisions).on_conflict_do_nothing(
                    index_elements=["event_id", "sensor", "trigger"]
                ),
                [
                    {
                        "event_id": event.id,
                        "sensor": event.sensor,
                        "trigger": decision.trigger,
                        "position": position,
                        "matched": decision.matched,
                        "reason": decision.reason,
                        "run_id": resolved.get(decision.run_id, decision.run_id)
                        if decision.run_id is not None
                        else None,
                    }
                    for position, decision in enumerate(decisions)
                ],
            )
        return DispatchResult(created=tuple(created), existing=existing)

    async def _insert_run(
        self, connection: AsyncConnection, run: NewRun, event_id: str, now: datetime
    ) -> RunRecord | None:
        """Insert one run and its Pending steps; None when its dedupe key is taken."""
        record = RunRecord(
            id=run.id,
            trigger=run.trigger,
            workflow=run.workflow,
            event_id=event_id,
            dedupe_key=run.dedupe_key,
            arguments=dict(run.arguments),
            workflow_spec=dict(run.workflow_spec),
            state="Pending",
            reason=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            cancel_requested=False,
            steps=tuple(StepRecord(name=name, state="Pending") for name in run.step_names),
        )
        columns = {
            name: getattr(record, name) for name in (column.name for column in tables.runs.columns)
        }
        inserted = await connection.execute(
            self._insert(tables.runs)
            .values(columns)
            .on_conflict_do_nothing(index_elements=["trigger", "dedupe_key"])
            .returning(tables.runs.c.id)
        )
        if inserted.first() is None:
            return None
        if run.step_names:
            await connection.execute(
                tables.steps.insert(),
                [
                    {
                        "run_id": run.id,
                        "name": name,
                        "position": position,
                        "state": "Pending",
                        "attempt": 0,
                    }
                    for position, name in enumerate(run.step_names)
                ],
            )
        return record

    async def _runs(self, connection: AsyncConnection, query: Select[Any]) -> list[RunRecord]:
        """The runs `query` selects, with their steps: two statements however many runs."""
        rows = (await connection.execute(query)).all()
        if not rows:
            return []
        chosen = query.with_only_columns(tables.runs.c.id).subquery()
        step_rows = await connection.execute(
            select(tables.steps)
            .join(chosen, tables.steps.c.run_id == chosen.c.id)
            .order_by(tables.steps.c.run_id, tables.steps.c.position)
        )
        steps: dict[str, list[StepRecord]] = defaultdict(list)
        for row in step_rows:
            steps[row.run_id].append(tables.step_record(row))
        return [tables.run_record(row, tuple(steps[row.id])) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._transaction() as connection:
            found = await self._runs(
                connection, select(tables.runs).where(tables.runs.c.id == run_id)
            )
        return found[0] if found else None

    async def list_runs(
        self, *, limit: int = 50, state: str | None = None, trigger: str | None = None
    ) -> list[RunRecord]:
        if limit < 1:
            raise ValueError(f"limit: {limit} is not a positive number of runs")
        query = select(tables.runs)
        if state is not None:
            query = query.where(tables.runs.c.state == state)
        if trigger is not None:
            query = query.where(tables.runs.c.trigger == trigger)
        query = query.order_by(tables.runs.c.created_at.desc(), tables.runs.c.id.desc())
        async with self._transaction() as connection:
            return await self._runs(connection, query.limit(limit))

    async def unfinished_runs(self) -> list[RunRecord]:
        query = (
            select(tables.runs)
            .where(tables.runs.c.state.in_(UNFINISHED_RUN_STATES))
            .order_by(tables.runs.c.created_at, tables.runs.c.id)
        )
        async with self._transaction() as connection:
            return await self._runs(connection, query)

    async def count_runs(self, trigger: str | None = None) -> dict[str, int]:
        query = select(tables.runs.c.state, func.count()).group_by(tables.runs.c.state)
        if trigger is not None:
            query = query.where(tables.runs.c.trigger == trigger)
        async with self._transaction() as connection:
            rows = (await connection.execute(query)).all()
        counted = {str(state): int(count) for state, count in rows}
        return {state: counted.get(state, 0) for state in RUN_STATES}

    async def set_run_state(
        self, run_id: str, state: str, *, reason: str | None, now: datetime
    ) -> None:
        async with self._transaction(write=True) as connection:
            await self._set_run_state(connection, run_id, state, reason, now)

    async def save_progress(
        self,
        run_id: str,
        *,
        steps: Sequence[StepRecord] = (),
        logs: Sequence[StepLog] = (),
        run_state: tuple[str, str | None] | None = None,
        now: datetime,
    ) -> None:
        async with self._transaction(write=True) as connection:
            if steps:
                await self._save_steps(connection, run_id, steps)
            for log in logs:
                await self._save_step_log(connection, run_id, log.step, log.attempt, log.text)
            if run_state is not None:
                await self._set_run_state(connection, run_id, *run_state, now)
            elif not steps and not logs:
                await self._require_run(connection, run_id)

    async def _set_run_state(
        self,
        connection: AsyncConnection,
        run_id: str,
        state: str,
        reason: str | None,
        now: datetime,
    ) -> None:
        if state not in RUN_STATES:
            raise ValueError(f"state: {state!r} is not a run state; use one of {RUN_STATES}")
        now = aware_utc(now, "now")
        values: dict[str, Any] = {"state": state, "reason": reason}
        stamp = literal(now, tables.UtcDateTime())
        if state == "Running":
            values["started_at"] = func.coalesce(tables.runs.c.started_at, stamp)
        if state in TERMINAL_RUN_STATES:
            values["finished_at"] = stamp
        result = await connection.execute(
            update(tables.runs).where(tables.runs.c.id == run_id).values(values)
        )
        if result.rowcount == 0:
            raise LookupError(f"run {run_id!r} does not exist")

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        async with self._transaction(write=True) as connection:
            await connection.execute(
                update(tables.runs).where(tables.runs.c.id == run_id).values(cancel_requested=True)
            )
            found = await self._runs(
                connection, select(tables.runs).where(tables.runs.c.id == run_id)
            )
        return found[0] if found else None

    async def _require_run(self, connection: AsyncConnection, run_id: str) -> None:
        query = select(tables.runs.c.id).where(tables.runs.c.id == run_id)
        if await connection.scalar(query) is None:
            raise LookupError(f"run {run_id!r} does not exist")

    async def save_steps(self, run_id: str, steps: Sequence[StepRecord]) -> None:
        if not steps:
            self._check_names(run_id, steps)
            return
        async with self._transaction(write=True) as connection:
            await self._save_steps(connection, run_id, steps)

    @staticmethod
    def _check_names(run_id: str, steps: Sequence[StepRecord]) -> None:
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"steps of run {run_id!r}: names repeat in {names}; give each once")

    async def _save_steps(
        self, connection: AsyncConnection, run_id: str, steps: Sequence[StepRecord]
    ) -> None:
        """Update the steps in place (the common case: they were created with the run);
        insert the ones the run does not have yet, after the others."""
        self._check_names(run_id, steps)
        steps_table = tables.steps
        missing: list[StepRecord] = []
        for step in steps:
            fields = {name: getattr(step, name) for name in _STEP_FIELDS + _STEP_DATA}
            updated = await connection.execute(
                update(steps_table)
                .where(steps_table.c.run_id == run_id, steps_table.c.name == step.name)
                .values(fields)
            )
            if updated.rowcount == 0:
                missing.append(step)
        if not missing:
            return
        await self._require_run(connection, run_id)
        after = await connection.scalar(
            select(func.coalesce(func.max(steps_table.c.position) + 1, 0)).where(
                steps_table.c.run_id == run_id
            )
        )
        await connection.execute(
            self._insert(steps_table),
            [
                {"run_id": run_id, "name": step.name, "position": int(after or 0) + offset}
                | {name: getattr(step, name) for name in _STEP_FIELDS + _STEP_DATA}
                for offset, step in enumerate(missing)
            ],
        )

    async def save_step_log(self, run_id: str, step: str, attempt: int, text: str) -> None:
        async with self._transaction(write=True) as connection:
            await self._save_step_log(connection, run_id, step, attempt, text)

    async def _save_step_log(
        self, connection: AsyncConnection, run_id: str, step: str, attempt: int, text: str
    ) -> None:
        statement = self._insert(tables.step_logs).values(
            run_id=run_id, step=step, attempt=attempt, text=text
        )
        try:
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["run_id", "step", "attempt"],
                    set_={"text": statement.excluded.text},
                )
            )
        except IntegrityError as error:  # the foreign key to runs: no such run
            raise LookupError(f"run {run_id!r} does not exist") from error

    async def get_step_log(self, run_id: str, step: str, attempt: int | None = None) -> str | None:
        logs = tables.step_logs
        query = select(logs.c.text).where(logs.c.run_id == run_id, logs.c.step == step)
        if attempt is not None:
            query = query.where(logs.c.attempt == attempt)
        async with self._transaction() as connection:
            found = await connection.scalar(query.order_by(logs.c.attempt.desc()).limit(1))
        return None if found is None else str(found)

    async def _events(self, connection: AsyncConnection, query: Select[Any]) -> list[EventRecord]:
        """The events `query` selects, with their decisions: two statements."""
        rows = (await connection.execute(query)).all()
        if not rows:
            return []
        chosen = query.with_only_columns(tables.events.c.id, tables.events.c.sensor).subquery()
        found = tables.decisions
        decision_rows = await connection.execute(
            select(found)
            .join(chosen, and_(found.c.event_id == chosen.c.id, found.c.sensor == chosen.c.sensor))
            .order_by(found.c.event_id, found.c.sensor, found.c.position)
        )
        decisions: dict[tuple[str, str], list[Decision]] = defaultdict(list)
        for row in decision_rows:
            decisions[row.event_id, row.sensor].append(tables.decision(row))
        return [tables.event_record(row, tuple(decisions[row.id, row.sensor])) for row in rows]

    async def get_event(self, event_id: str, sensor: str | None = None) -> EventRecord | None:
        query = select(tables.events).where(tables.events.c.id == event_id)
        if sensor is not None:
            query = query.where(tables.events.c.sensor == sensor)
        query = query.order_by(tables.events.c.received_at, tables.events.c.sensor).limit(1)
        async with self._transaction() as connection:
            found = await self._events(connection, query)
        return found[0] if found else None

    async def list_events(self, *, limit: int = 50) -> list[EventRecord]:
        if limit < 1:
            raise ValueError(f"limit: {limit} is not a positive number of events")
        query = (
            select(tables.events)
            .order_by(tables.events.c.received_at.desc(), tables.events.c.id.desc())
            .limit(limit)
        )
        async with self._transaction() as connection:
            return await self._events(connection, query)
