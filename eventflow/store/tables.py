"""The store's schema as SQLAlchemy Core tables, shared by SQLite and PostgreSQL, and the
mapping of their rows to records.

Migrations under `migrations/versions` create these tables; they are written by hand and
must match what is declared here. This module runs no query.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from eventflow.store.records import Decision, EventRecord, RunRecord, StepRecord


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps them naive, so they are tagged on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def driver_utc(dialect: str) -> Callable[[datetime], datetime | str]:
    """What a `UtcDateTime` column hands the driver for an aware datetime, for statements run
    with `exec_driver_sql`, which skip SQLAlchemy's bind processing per value: on SQLite the
    naive UTC text that SQLAlchemy's DATETIME writes ("2024-05-01 12:00:00.000000"), formatted
    in C; on PostgreSQL the datetime in UTC."""
    if dialect == "sqlite":
        return _sqlite_utc
    return lambda value: value.astimezone(UTC)


def _sqlite_utc(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json() -> Any:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", String(255), nullable=False),
    Column("sensor", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("source", Text, nullable=False),
    Column("subject", Text),
    Column("received_at", UtcDateTime, nullable=False),
    Column("document", _json(), nullable=False),
    PrimaryKeyConstraint("id", "sensor", name="pk_events"),
    Index("ix_events_received_at", "received_at"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("event_id", String(255), nullable=False),
    Column("sensor", String(255), nullable=False),
    Column("trigger", String(255), nullable=False),
    Column("position", Integer, nullable=False),
    Column("matched", Boolean, nullable=False),
    Column("reason", Text),
    Column("run_id", String(255)),
    PrimaryKeyConstraint("event_id", "sensor", "trigger", name="pk_decisions"),
    ForeignKeyConstraint(
        ["event_id", "sensor"], ["events.id", "events.sensor"], name="fk_decisions_event"
    ),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(255), nullable=False),
    Column("trigger", String(255), nullable=False),
    Column("workflow", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("dedupe_key", Text, nullable=False),
    Column("arguments", _json(), nullable=False),
    Column("workflow_spec", _json(), nullable=False),
    Column("state", String(32), nullable=False),
    Column("reason", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("cancel_requested", Boolean, nullable=False),
    # The replica driving the run, and until when (eventflow/runs/runner.py renews it).
    Column("owner", String(255)),
    Column("lease_until", UtcDateTime),
    PrimaryKeyConstraint("id", name="pk_runs"),
    UniqueConstraint("trigger", "dedupe_key", name="uq_runs_trigger_dedupe_key"),
    Index("ix_runs_state", "state"),
    Index("ix_runs_created_at", "created_at"),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("position", Integer, nullable=False),
    Column("state", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("exit_code", Integer),
    Column("reason", Text),
    Column("outputs", _json()),
    Column("log_tail", Text),
    PrimaryKeyConstraint("run_id", "name", name="pk_steps"),
    ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_steps_run"),
)

step_logs = Table(
    "step_logs",
    metadata,
    Column("run_id", String(255), nullable=False),
    Column("step", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("text", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "step", "attempt", name="pk_step_logs"),
    ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_step_logs_run"),
)

# Sensors' own keys and values (eventflow/sensing/protocol.py SensorState). Keys compare as
# bytes: SQLite's default, and the "C" collation on PostgreSQL, whatever the database's locale.
sensor_state = Table(
    "sensor_state",
    metadata,
    Column("sensor", String(255), nullable=False),
    Column("space", String(64), nullable=False),
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("value", Text, nullable=False),
    Column("expires_at", UtcDateTime),
    PrimaryKeyConstraint("sensor", "space", "key", name="pk_sensor_state"),
    Index("ix_sensor_state_expires_at", "expires_at"),
)

# Webhook endpoints registered through the REST API: the `spec.webhook` the user sent, as sent.
webhooks = Table(
    "webhooks",
    metadata,
    Column("name", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("spec", _json(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("name", name="pk_webhooks"),
    UniqueConstraint("path", name="uq_webhooks_path"),
)


def step_record(row: Any) -> StepRecord:
    return StepRecord(
        name=row.name,
        state=row.state,
        attempt=row.attempt,
        started_at=row.started_at,
        finished_at=row.finished_at,
        exit_code=row.exit_code,
        reason=row.reason,
        outputs=row.outputs,
        log_tail=row.log_tail,
    )


def run_record(row: Any, steps: tuple[StepRecord, ...]) -> RunRecord:
    return RunRecord(
        id=row.id,
        trigger=row.trigger,
        workflow=row.workflow,
        event_id=row.event_id,
        dedupe_key=row.dedupe_key,
        arguments=row.arguments,
        workflow_spec=row.workflow_spec,
        state=row.state,
        reason=row.reason,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        cancel_requested=row.cancel_requested,
        steps=steps,
        owner=row.owner,
        lease_until=row.lease_until,
    )


def decision(row: Any) -> Decision:
    return Decision(trigger=row.trigger, matched=row.matched, reason=row.reason, run_id=row.run_id)


def event_record(row: Any, decisions: tuple[Decision, ...]) -> EventRecord:
    return EventRecord(
        id=row.id,
        sensor=row.sensor,
        type=row.type,
        source=row.source,
        subject=row.subject,
        received_at=row.received_at,
        document=row.document,
        decisions=decisions,
    )
