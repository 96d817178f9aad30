"""The deploy agent: images it writes, deployments it carries out, wipes it proves.

Images gain how they are deployed (an installer with an answer file, or an image the
agent writes) and the image's URL, checksum and format. Deployments record whether an
installer or the agent does the machine's side, the agent's last heartbeat and when it
finished its job. ``disk_wipe`` keeps the evidence of each disk's wipe.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("os_image", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deploy", sa.String(length=16), nullable=False, server_default="installer")
        )
        batch_op.add_column(
            sa.Column("image_url", sa.String(length=1024), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("checksum", sa.String(length=71), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("format", sa.String(length=8), nullable=False, server_default="")
        )
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("method", sa.String(length=16), nullable=False, server_default="installer")
        )
        batch_op.add_column(sa.Column("agent_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("agent_done_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "disk_wipe",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("disk", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("verified", sa.String(length=200), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployment.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_disk_wipe_node_id", "disk_wipe", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_disk_wipe_node_id", table_name="disk_wipe")
    op.drop_table("disk_wipe")
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("agent_done_at")
        batch_op.drop_column("agent_seen_at")
        batch_op.drop_column("method")
    with op.batch_alter_table("os_image", schema=None) as batch_op:
        batch_op.drop_column("format")
        batch_op.drop_column("checksum")
        batch_op.drop_column("image_url")
        batch_op.drop_column("deploy")
