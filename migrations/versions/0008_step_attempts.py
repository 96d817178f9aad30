"""Deployment steps remember when they began and how often they were tried.

A step that waits on something outside the service (the Puppet CA) retries with backoff
and gives up after a settable time, so both must survive a restart.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("step_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("step_attempts")
        batch_op.drop_column("step_started_at")
