"""Every store operation as one synchronous function of a SQLAlchemy `Connection`.

`SqlStore` runs each of them whole, as one transaction, through a `runner`: on a SQLite
thread or inside asyncpg's `run_sync`, so both backends share one implementation. The hot
statements are built once, with bind parameters, so that SQLAlchemy finds them compiled in
its cache instead of building a cache key per call. This module opens no transaction and
does not validate what callers can check without the database (`now`, limits, states).

Runs are leased to the replica that drives them (`Lease`): a write to a run checks, in the
same transaction and with the same row read that refuses a finished run, that the run is
still this replica's. On PostgreSQL that read takes a share lock on the run's row, so a
claim by another replica (which skips locked rows) cannot slip between the check and the
commit; on SQLite the one writer at a time gives the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import ReturningUpdate

from eventflow.store import tables
from eventflow.store.bulk import BulkInsert
from eventflow.store.records import (
    TERMINAL_RUN_STATES,
    UNFINISHED_RUN_STATES,
    Decision,
    DispatchItem,
    DispatchResult,
    EventRecord,
    Lease,
    LeaseLostError,
    NewRun,
    Renewal,
    RunFinishedError,
    RunRecord,
    StepLog,
    StepRecord,
    aware_utc,
)

_STEP_COLUMNS = (
    "state",
    "attempt",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "outputs",
    "log_tail",
)
_RUN_COLUMNS = tuple(column.name for column in tables.runs.columns)
# Ids per statement when renewing or releasing: far below the bind parameter limits of
# SQLite (32766) and asyncpg (32767), however many runs a replica drives.
_IDS_PER_STATEMENT = 1000


def check_step_names(run_id: str, steps: Sequence[StepRecord]) -> None:
    """A ValueError when `steps` names one step twice."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"steps of run {run_id!r}: names repeat in {names}; give each once")


def _step_values(step: StepRecord) -> dict[str, Any]:
    return {name: getattr(step, name) for name in _STEP_COLUMNS}


def _missing_run(run_id: str) -> LookupError:
    return LookupError(f"run {run_id!r} does not exist")


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[at : at + _IDS_PER_STATEMENT] for at in range(0, len(ids), _IDS_PER_STATEMENT)]


class Operations:
    """The store's queries for one dialect ("sqlite" or "postgresql"), written as the
    replica `lease` names."""

    def __init__(self, dialect: str, lease: Lease) -> None:
        self._lease = lease
        self._lease_length = timedelta(seconds=lease.seconds)
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        runs, steps, logs = tables.runs, tables.steps, tables.step_logs
        self._insert_events = BulkInsert(
            insert(tables.events).on_conflict_do_nothing(index_elements=["id", "sensor"])
        )
        self._driver_utc = tables.driver_utc(dialect)
        self._insert_run = (
            insert(runs)
            .on_conflict_do_nothing(index_elements=["trigger", "dedupe_key"])
            .returning(runs.c.id)
        )
        self._run_with_key = select(runs.c.id).where(
            runs.c.trigger == bindparam("p_trigger"), runs.c.dedupe_key == bindparam("p_key")
        )
        self._insert_steps = insert(steps)
        self._insert_decisions = BulkInsert(
            insert(tables.decisions).on_conflict_do_nothing(
                index_elements=["event_id", "sensor", "trigger"]
            )
        )
        self._update_step = (
            update(steps)
            .where(steps.c.run_id == bindparam("p_run_id"), steps.c.name == bindparam("p_name"))
            .values({name: bindparam(f"p_{name}") for name in _STEP_COLUMNS})
        )
        self._next_position = select(func.coalesce(func.max(steps.c.position) + 1, 0)).where(
            steps.c.run_id == bindparam("p_run_id")
        )
        self._run_state = select(runs.c.state).where(runs.c.id == bindparam("p_id"))
        self._run_holder = select(runs.c.state, runs.c.owner).where(runs.c.id == bindparam("p_id"))
        if dialect == "postgresql":
            self._run_holder = self._run_holder.with_for_update(read=True)
        self._claim = self._claim_statement(dialect)
        mine = and_(
            runs.c.id.in_(bindparam("p_ids", expanding=True)),
            runs.c.owner == bindparam("p_owner"),
        )
        self._renew = (
            update(runs)
            .where(mine)
            .values(lease_until=bindparam("p_until", type_=tables.UtcDateTime()))
            .returning(runs.c.id, runs.c.cancel_requested)
        )
        release = (
            update(runs)
            .where(runs.c.owner == bindparam("p_owner"), runs.c.state.in_(UNFINISHED_RUN_STATES))
            .values(owner=None, lease_until=None)
        )
        self._release_all = release
        self._release = release.where(runs.c.id.in_(bindparam("p_ids", expanding=True)))
        self._run = select(runs).where(runs.c.id == bindparam("p_id"))
        log_insert = insert(logs)
        self._upsert_log = log_insert.on_conflict_do_update(
            index_elements=["run_id", "step", "attempt"], set_={"text": log_insert.excluded.text}
        )
        stamp = bindparam("p_now", type_=tables.UtcDateTime())
        set_state = (
            update(runs)
            .where(
                runs.c.id == bindparam("p_id"),
                runs.c.state.not_in(TERMINAL_RUN_STATES),
                runs.c.owner == bindparam("p_owner"),
            )
            .values(state=bindparam("p_state"), reason=bindparam("p_reason"))
        )
        self._set_state = set_state
        self._set_running = set_state.values(started_at=func.coalesce(runs.c.started_at, stamp))
        self._set_finished = set_state.values(finished_at=stamp)
        self._flag_cancel = (
            update(runs).where(runs.c.id == bindparam("p_id")).values(cancel_requested=True)
        )

    @staticmethod
    def _claim_statement(dialect: str) -> ReturningUpdate[tuple[Any]]:
        """Lease the oldest claimable unfinished runs: one UPDATE whose subquery picks them.

        On PostgreSQL the subquery locks what it picks and skips rows another transaction
        holds (a claimer, or the owner writing), so concurrent claimers share no run; and a
        row renewed since the snapshot is re-checked against its new lease and left out.
        SQLite has one writer at a time, so its plain UPDATE is already alone.
        """
        runs = tables.runs
        claimable = (
            select(runs.c.id)
            .where(
                runs.c.state.in_(UNFINISHED_RUN_STATES),
                or_(
                    runs.c.owner.is_(None),
                    runs.c.lease_until < bindparam("p_now", type_=tables.UtcDateTime()),
                ),
            )
            .order_by(runs.c.created_at, runs.c.id)
            .limit(bindparam("p_limit"))
        )
        if dialect == "postgresql":
            claimable = claimable.with_for_update(skip_locked=True)
        return (
            update(runs)
            .where(runs.c.id.in_(claimable.scalar_subquery()))
            .values(
                owner=bindparam("p_owner"),
                lease_until=bindparam("p_until", type_=tables.UtcDateTime()),
            )
            .returning(runs.c.id)
        )

    def record_dispatches(
        self, connection: Connection, batch: Sequence[DispatchItem], now: datetime
    ) -> list[DispatchResult]:
        """The events of a batch in one statement, their runs one by one (a dedupe hit must be
        seen per run), and all their decisions in one statement."""
        if not batch:
            return []
        stamp = self._driver_utc
        self._insert_events(
            connection,
            [
                (
                    event.id,
                    event.sensor,
                    event.event.type,
                    event.event.source,
                    event.event.subject,
                    stamp(aware_utc(event.received_at, "event.received_at")),
                    event.event.to_json().decode(),
                )
                for event, _, _ in batch
            ],
        )
        results: list[DispatchResult] = []
        decision_rows: list[tuple[object, ...]] = []
        for event, decisions, runs in batch:
            created: list[RunRecord] = []
            existing: dict[str, str] = {}
            resolved: dict[str, str] = {}
            for run in runs:
                record = self._insert_new_run(connection, run, event.id, now)
                if record is None:
                    found = connection.scalar(
                        self._run_with_key, {"p_trigger": run.trigger, "p_key": run.dedupe_key}
                    )
                    existing[run.trigger] = resolved[run.id] = str(found)
                else:
                    created.append(record)
            decision_rows.extend(
                (
                    event.id,
                    event.sensor,
                    decision.trigger,
                    position,
                    decision.matched,
                    decision.reason,
                    resolved.get(decision.run_id, decision.run_id)
                    if decision.run_id is not None
                    else None,
                )
                for position, decision in enumerate(decisions)
            )
            results.append(DispatchResult(created=tuple(created), existing=existing))
        if decision_rows:
            self._insert_decisions(connection, decision_rows)
        return results

    def _insert_new_run(
        self, connection: Connection, run: NewRun, event_id: str, now: datetime
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
            owner=self._lease.owner,
            lease_until=now + self._lease_length,
        )
        columns = {name: getattr(record, name) for name in _RUN_COLUMNS}
        if connection.execute(self._insert_run, columns).first() is None:
            return None
        if run.step_names:
            connection.execute(
                self._insert_steps,
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

    def save_progress(
        self,
        connection: Connection,
        run_id: str,
        *,
        steps: Sequence[StepRecord],
        logs: Sequence[StepLog],
        run_state: tuple[str, str | None] | None,
        now: datetime,
    ) -> None:
        self._require_writable(connection, run_id)
        if steps:
            self.save_steps(connection, run_id, steps)
        if logs:
            self.save_step_logs(connection, run_id, logs)
        if run_state is not None:
            self.set_run_state(connection, run_id, *run_state, now)

    def set_run_state(
        self, connection: Connection, run_id: str, state: str, reason: str | None, now: datetime
    ) -> None:
        """Set a state `now` checked by the caller; stamps started_at and finished_at."""
        values: dict[str, Any] = {
            "p_id": run_id,
            "p_state": state,
            "p_reason": reason,
            "p_owner": self._lease.owner,
        }
        statement = self._set_state
        if state == "Running":
            statement = self._set_running
            values["p_now"] = now
        elif state in TERMINAL_RUN_STATES:
            statement = self._set_finished
            values["p_now"] = now
        if connection.execute(statement, values).rowcount == 0:
            self._require_writable(connection, run_id)

    def request_cancel(self, connection: Connection, run_id: str) -> RunRecord | None:
        connection.execute(self._flag_cancel, {"p_id": run_id})
        return self.get_run(connection, run_id)

    def _require_run(self, connection: Connection, run_id: str) -> str:
        state = connection.scalar(self._run_state, {"p_id": run_id})
        if state is None:
            raise _missing_run(run_id)
        return str(state)

    def _require_writable(self, connection: Connection, run_id: str) -> None:
        """Refuse a write to a run that is missing, finished, or not leased to this replica."""
        row = connection.execute(self._run_holder, {"p_id": run_id}).first()
        if row is None:
            raise _missing_run(run_id)
        if row.state in TERMINAL_RUN_STATES:
            raise RunFinishedError(run_id, row.state)
        if row.owner != self._lease.owner:
            raise LeaseLostError(run_id, self._lease.owner, row.owner)

    def claim_runs(self, connection: Connection, now: datetime, limit: int) -> list[RunRecord]:
        claimed = connection.scalars(
            self._claim,
            {
                "p_now": now,
                "p_limit": limit,
                "p_owner": self._lease.owner,
                "p_until": now + self._lease_length,
            },
        ).all()
        if not claimed:
            return []
        runs = tables.runs
        query = (
            select(runs)
            .where(runs.c.id.in_(bindparam("p_ids", expanding=True)))
            .order_by(runs.c.created_at, runs.c.id)
        )
        return self.runs(connection, query, {"p_ids": list(claimed)})

    def renew_leases(
        self, connection: Connection, run_ids: Sequence[str], now: datetime
    ) -> Renewal:
        held: set[str] = set()
        cancel_requested: set[str] = set()
        until = now + self._lease_length
        for ids in _chunks(run_ids):
            rows = connection.execute(
                self._renew, {"p_ids": list(ids), "p_owner": self._lease.owner, "p_until": until}
            )
            for run_id, cancel in rows:
                held.add(run_id)
                if cancel:
                    cancel_requested.add(run_id)
        return Renewal(held=frozenset(held), cancel_requested=frozenset(cancel_requested))

    def release_runs(self, connection: Connection, run_ids: Sequence[str]) -> None:
        for ids in _chunks(run_ids):
            connection.execute(self._release, {"p_ids": list(ids), "p_owner": self._lease.owner})

    def release_all_runs(self, connection: Connection) -> None:
        connection.execute(self._release_all, {"p_owner": self._lease.owner})

    def save_steps(self, connection: Connection, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Update the steps in place (the common case: they were created with the run);
        insert the ones the run does not have yet, after the others."""
        check_step_names(run_id, steps)
        missing = [
            step
            for step in steps
            if connection.execute(
                self._update_step,
                {"p_run_id": run_id, "p_name": step.name}
                | {f"p_{name}": value for name, value in _step_values(step).items()},
            ).rowcount
            == 0
        ]
        if not missing:
            return
        self._require_run(connection, run_id)
        after = int(connection.scalar(self._next_position, {"p_run_id": run_id}) or 0)
        connection.execute(
            self._insert_steps,
            [
                {"run_id": run_id, "name": step.name, "position": after + offset}
                | _step_values(step)
                for offset, step in enumerate(missing)
            ],
        )

    def save_step_logs(self, connection: Connection, run_id: str, logs: Sequence[StepLog]) -> None:
        """Insert or replace the text of each (step, attempt)."""
        try:
            connection.execute(
                self._upsert_log,
                [
                    {"run_id": run_id, "step": log.step, "attempt": log.attempt, "text": log.text}
                    for log in logs
                ],
            )
        except IntegrityError as error:  # the foreign key to runs: no such run
            raise _missing_run(run_id) from error

    def ping(self, connection: Connection) -> None:
        connection.execute(select(literal(1)))

    def get_run(self, connection: Connection, run_id: str) -> RunRecord | None:
        found = self.runs(connection, self._run, {"p_id": run_id})
        return found[0] if found else None

    def runs(
        self, connection: Connection, query: Select[Any], parameters: dict[str, Any] | None = None
    ) -> list[RunRecord]:
        """The runs `query` selects, with their steps: two statements however many runs."""
        rows = connection.execute(query, parameters).all()
        if not rows:
            return []
        chosen = query.with_only_columns(tables.runs.c.id).subquery()
        steps = tables.steps
        step_rows = connection.execute(
            select(steps)
            .join(chosen, steps.c.run_id == chosen.c.id)
            .order_by(steps.c.run_id, steps.c.position),
            parameters,
        )
        by_run: dict[str, list[StepRecord]] = defaultdict(list)
        for row in step_rows:
            by_run[row.run_id].append(tables.step_record(row))
        return [tables.run_record(row, tuple(by_run[row.id])) for row in rows]

    def count_runs(self, connection: Connection, trigger: str | None) -> dict[str, int]:
        runs = tables.runs
        query = select(runs.c.state, func.count()).group_by(runs.c.state)
        if trigger is not None:
            query = query.where(runs.c.trigger == trigger)
        return {str(state): int(count) for state, count in connection.execute(query).all()}

    def get_step_log(
        self, connection: Connection, run_id: str, step: str, attempt: int | None
    ) -> str | None:
        logs = tables.step_logs
        query = select(logs.c.text).where(logs.c.run_id == run_id, logs.c.step == step)
        if attempt is not None:
            query = query.where(logs.c.attempt == attempt)
        found = connection.scalar(query.order_by(logs.c.attempt.desc()).limit(1))
        return None if found is None else str(found)

    def events(self, connection: Connection, query: Select[Any]) -> list[EventRecord]:
        """The events `query` selects, with their decisions: two statements."""
        rows = connection.execute(query).all()
        if not rows:
            return []
        events, decisions = tables.events, tables.decisions
        chosen = query.with_only_columns(events.c.id, events.c.sensor).subquery()
        decision_rows = connection.execute(
            select(decisions)
            .join(
                chosen,
                and_(decisions.c.event_id == chosen.c.id, decisions.c.sensor == chosen.c.sensor),
            )
            .order_by(decisions.c.event_id, decisions.c.sensor, decisions.c.position)
        )
        by_event: dict[tuple[str, str], list[Decision]] = defaultdict(list)
        for row in decision_rows:
            by_event[row.event_id, row.sensor].append(tables.decision(row))
        return [tables.event_record(row, tuple(by_event[row.id, row.sensor])) for row in rows]
