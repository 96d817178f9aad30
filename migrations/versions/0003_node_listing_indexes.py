"""node listing indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (filter, name): a page filtered by rack, role or state is an index range scan.
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.create_index("ix_node_rack_name", ["rack", "name"], unique=False)
        batch_op.create_index("ix_node_role_name", ["role", "name"], unique=False)
        batch_op.create_index("ix_node_state_name", ["state", "name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_index("ix_node_state_name")
        batch_op.drop_index("ix_node_role_name")
        batch_op.drop_index("ix_node_rack_name")
