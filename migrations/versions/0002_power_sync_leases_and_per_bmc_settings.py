"""power sync, leases and per-BMC settings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:59:25.805544
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults fill the new NOT NULL columns of existing rows.
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timeout", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cipher_suite", sa.Integer(), nullable=True))

    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("power_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(
            sa.Column("power_checked_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("power_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("target_power", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )
        batch_op.add_column(
            sa.Column("auto_inspect", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_unique_constraint(batch_op.f("uq_node_rack"), ["rack", "rack_unit"])


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_node_rack"), type_="unique")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("auto_inspect")
        batch_op.drop_column("target_power")
        batch_op.drop_column("power_failures")
        batch_op.drop_column("power_checked_at")
        batch_op.drop_column("power_reason")

    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.drop_column("cipher_suite")
        batch_op.drop_column("retries")
        batch_op.drop_column("timeout")
