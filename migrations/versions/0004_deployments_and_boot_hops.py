"""deployments and boot hops

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_string = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("kind", _string(length=16), nullable=False),
        sa.Column("role", _string(length=63), nullable=True),
        sa.Column("image", _string(length=63), nullable=True),
        sa.Column("token_hash", _string(length=64), nullable=False),
        sa.Column("token_encrypted", _string(length=512), nullable=False),
        sa.Column("challenge_encrypted", _string(length=512), nullable=False),
        sa.Column("status", _string(length=16), nullable=False),
        sa.Column("message", _string(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["node.id"], name=op.f("fk_deployment_node_id_node"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    op.create_index(op.f("ix_deployment_node_id"), "deployment", ["node_id"], unique=False)
    op.create_index(op.f("ix_deployment_token_hash"), "deployment", ["token_hash"], unique=True)
    op.create_table(
        "boot_hop",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client", _string(length=45), nullable=False),
        sa.Column("mac", _string(length=17), nullable=True),
        sa.Column("kind", _string(length=16), nullable=False),
        sa.Column("detail", _string(length=500), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boot_hop")),
    )
    with op.batch_alter_table("nic", schema=None) as batch_op:
        batch_op.add_column(sa.Column("boot_ip", _string(length=45), nullable=True))
        batch_op.create_index(batch_op.f("ix_nic_boot_ip"), ["boot_ip"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("nic", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nic_boot_ip"))
        batch_op.drop_column("boot_ip")
    op.drop_table("boot_hop")
    op.drop_index(op.f("ix_deployment_token_hash"), table_name="deployment")
    op.drop_index(op.f("ix_deployment_node_id"), table_name="deployment")
    op.drop_table("deployment")
