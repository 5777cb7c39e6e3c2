"""Sensors' own keys and values: checkpoints and dedupe windows.

Revision ID: 0002_sensor_state
Revises: 0001
Create Date: 2026-11-23

Written by hand to match eventflow/store/tables.py. Keys sort as bytes: the "C" collation on
PostgreSQL, SQLite's default BINARY elsewhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sensor_state"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sensor_state",
        sa.Column("sensor", sa.String(255), nullable=False),
        sa.Column("space", sa.String(64), nullable=False),
        sa.Column(
            "key",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("sensor", "space", "key", name="pk_sensor_state"),
    )
    op.create_index("ix_sensor_state_expires_at", "sensor_state", ["expires_at"])


def downgrade() -> None:
    op.drop_table("sensor_state")
