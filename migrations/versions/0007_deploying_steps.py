"""deploying steps, wake times, batches and the racking flow

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults fill the new NOT NULL columns of existing rows.
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "step",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="network",
            )
        )
        batch_op.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("batch_limit", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_deployment_batch_id"), ["batch_id"], unique=False)

    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_provision", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_column("wake_at")
        batch_op.drop_column("auto_provision")
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_batch_id"))
        batch_op.drop_column("batch_limit")
        batch_op.drop_column("batch_id")
        batch_op.drop_column("step")
