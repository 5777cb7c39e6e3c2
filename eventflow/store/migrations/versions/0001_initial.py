"""The initial schema: events, decisions, runs, steps, step_logs.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Written by hand to match eventflow/store/tables.py. Timestamps are timezone-aware columns
(SQLite stores them naive, in UTC); JSON is JSONB on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _time(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("sensor", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text()),
        _time("received_at", nullable=False),
        sa.Column("document", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", "sensor", name="pk_events"),
    )
    op.create_index("ix_events_received_at", "events", ["received_at"])
    op.create_table(
        "decisions",
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("sensor", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("run_id", sa.String(255)),
        sa.PrimaryKeyConstraint("event_id", "sensor", "trigger", name="pk_decisions"),
        sa.ForeignKeyConstraint(
            ["event_id", "sensor"], ["events.id", "events.sensor"], name="fk_decisions_event"
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(255), nullable=False),
        sa.Column("workflow", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("arguments", _json(), nullable=False),
        sa.Column("workflow_spec", _json(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text()),
        _time("created_at", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("trigger", "dedupe_key", name="uq_runs_trigger_dedupe_key"),
    )
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("reason", sa.Text()),
        sa.Column("outputs", _json()),
        sa.Column("log_tail", sa.Text()),
        sa.PrimaryKeyConstraint("run_id", "name", name="pk_steps"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_steps_run"),
    )
    op.create_table(
        "step_logs",
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("step", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", "attempt", name="pk_step_logs"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_step_logs_run"),
    )


def downgrade() -> None:
    for table in ("step_logs", "steps", "runs", "decisions", "events"):
        op.drop_table(table)
