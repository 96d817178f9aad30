"""A BMC address and port belong to one node: a unique constraint on bmc (address, port).

Until issue 11 two nodes could be enrolled with the same BMC, and the service then
powered and booted one machine for both. A database that holds such pairs cannot take
the constraint; the upgrade stops before adding it, with the nodes that share each BMC
and what to do, rather than with the database's bare refusal.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import SQLAlchemyError

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SHARED = sa.text(
    "SELECT bmc.address, bmc.port, node.name FROM bmc"
    " JOIN node ON node.id = bmc.node_id"
    " JOIN (SELECT address, port FROM bmc GROUP BY address, port HAVING count(*) > 1) shared"
    " ON shared.address = bmc.address AND shared.port = bmc.port"
    " ORDER BY bmc.address, bmc.port, node.created_at, node.name"
)


class SharedBmcs(SQLAlchemyError):
    """Nodes share a BMC, so the constraint cannot be added. A database error, like the
    refusal it replaces, so that whoever migrates reports it as one (the CLI shows its
    first line, which is why the message is a single line)."""


def upgrade() -> None:
    users: dict[tuple[str, int], list[str]] = {}
    for address, port, name in op.get_bind().execute(_SHARED):
        users.setdefault((address, port), []).append(name)
    if users:
        raise SharedBmcs(_explain(users))
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_bmc_address_port", ["address", "port"])


# What to do, for a person: ruff takes the SQL in it for a query being built.
_ADVICE = (
    "Give every node but one of each its own BMC address or port with the version you "
    "are upgrading from (PATCH /api/v1/nodes/NAME with "
    '{"bmc": {"address": "...", "port": ...}}, or DELETE /api/v1/nodes/NAME for a node '
    "that is not a machine of its own), or in the database itself (UPDATE bmc SET "
    "address = '...', port = ... WHERE node_id = (SELECT id FROM node WHERE name = "
    "'NAME')); then run `provisioner db upgrade` again."
)


def _explain(users: dict[tuple[str, int], list[str]]) -> str:
    shared = "; ".join(
        f"BMC {address} port {port} by nodes {', '.join(repr(name) for name in names)}"
        for (address, port), names in users.items()
    )
    many = len(users) > 1
    return (
        f"the upgrade to revision {revision} stopped: a BMC address and port now belong to "
        f"one node, and {len(users)} BMC{'s are' if many else ' is'} used by several "
        f"({shared}). {_ADVICE}"
    )


def downgrade() -> None:
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.drop_constraint("uq_bmc_address_port", type_="unique")
