"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:24:19.677041
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
    )
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_token_token_hash"), ["token_hash"], unique=True)

    op.create_table(
        "node",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("rack", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("rack_unit", sa.Integer(), nullable=True),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("hardware_profile", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("image", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("failed_from", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("power_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column(
            "maintenance_reason", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
        ),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node")),
    )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_maintenance"), ["maintenance"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_node_rack"), ["rack"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_role"), ["role"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_state"), ["state"], unique=False)

    op.create_table(
        "os_image",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("os_family", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("kernel_url", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("initrd_url", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("repo_url", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("answer_template", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("kernel_args", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_os_image")),
    )
    op.create_table(
        "role",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("default_image", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("auto_provision", sa.Boolean(), nullable=False),
        sa.Column(
            "puppet_environment", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False
        ),
        sa.Column("puppet_classes", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("packages", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_role")),
    )
    op.create_table(
        "bmc",
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("driver", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "password_encrypted", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["node.id"], name=op.f("fk_bmc_node_id_node"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_bmc")),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("from_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("to_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("message", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["node.id"], name=op.f("fk_event_node_id_node"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_node_id_id", ["node_id", "id"], unique=False)

    op.create_table(
        "inventory_fact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["node.id"],
            name=op.f("fk_inventory_fact_node_id_node"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_fact")),
    )
    with op.batch_alter_table("inventory_fact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inventory_fact_node_id"), ["node_id"], unique=False)

    op.create_table(
        "nic",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("mac", sqlmodel.sql.sqltypes.AutoString(length=17), nullable=False),
        sa.Column("pxe", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["node.id"], name=op.f("fk_nic_node_id_node"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nic")),
    )
    with op.batch_alter_table("nic", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nic_mac"), ["mac"], unique=True)
        batch_op.create_index(batch_op.f("ix_nic_node_id"), ["node_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("nic", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nic_node_id"))
        batch_op.drop_index(batch_op.f("ix_nic_mac"))

    op.drop_table("nic")
    with op.batch_alter_table("inventory_fact", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inventory_fact_node_id"))

    op.drop_table("inventory_fact")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_node_id_id")

    op.drop_table("event")
    op.drop_table("bmc")
    op.drop_table("role")
    op.drop_table("os_image")
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_state"))
        batch_op.drop_index(batch_op.f("ix_node_role"))
        batch_op.drop_index(batch_op.f("ix_node_rack"))
        batch_op.drop_index(batch_op.f("ix_node_name"))
        batch_op.drop_index(batch_op.f("ix_node_maintenance"))

    op.drop_table("node")
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_token_token_hash"))

    op.drop_table("api_token")
