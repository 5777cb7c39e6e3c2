"""Run leases: the replica that drives each run, and until when (issue 4).

Revision ID: 0004_run_leases
Revises: 0003_webhooks
Create Date: 2026-11-23

Written by hand to match eventflow/store/tables.py. Runs stored before this revision have no
owner: the first replica to start claims the unfinished ones, as it resumed them before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_leases"
down_revision = "0003_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop columns in place, and downgrade must be able to
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")
