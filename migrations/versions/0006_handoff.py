"""hand-off: role hand-off settings, challenge use, webhook outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_string = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    # The server default fills the new NOT NULL column of existing roles.
    with op.batch_alter_table("role", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("handoff", _string(length=16), nullable=False, server_default="immediate")
        )
        batch_op.add_column(sa.Column("webhook_url", _string(length=1024), nullable=True))
        batch_op.add_column(
            sa.Column("webhook_secret_encrypted", _string(length=512), nullable=True)
        )
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("challenge_used_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("handoff_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("role", _string(length=63), nullable=False),
        sa.Column("event", _string(length=32), nullable=False),
        sa.Column("url", _string(length=1024), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", _string(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", _string(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["node.id"],
            name=op.f("fk_webhook_delivery_node_id_node"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployment.id"],
            name=op.f("fk_webhook_delivery_deployment_id_deployment"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(
        op.f("ix_webhook_delivery_idempotency_key"),
        "webhook_delivery",
        ["idempotency_key"],
        unique=True,
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["delivered_at", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_delivery_node_id_id", "webhook_delivery", ["node_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_delivery_node_id_id", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_due", table_name="webhook_delivery")
    op.drop_index(op.f("ix_webhook_delivery_idempotency_key"), table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("handoff_at")
        batch_op.drop_column("challenge_used_at")
    with op.batch_alter_table("role", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret_encrypted")
        batch_op.drop_column("webhook_url")
        batch_op.drop_column("handoff")
