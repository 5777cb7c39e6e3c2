"""Webhook endpoints registered through the REST API (POST /api/v1/webhooks).

Revision ID: 0003_webhooks
Revises: 0002_sensor_state
Create Date: 2026-11-23

Written by hand to match eventflow/store/tables.py. A row is a Sensor's `spec.webhook` as the
user sent it (secrets are references, never values); the path is its own column so that two
replicas registering one path at once meet a unique constraint.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_webhooks"
down_revision = "0002_sensor_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "spec",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True), "postgresql"
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_webhooks"),
        sa.UniqueConstraint("path", name="uq_webhooks_path"),
    )


def downgrade() -> None:
    op.drop_table("webhooks")
