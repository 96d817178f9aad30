"""Roles that a PATCH with a null left holding JSON ``null`` get their empty value back.

Before the PATCH validation of issue 11, ``{"parameters": null}`` (or ``packages``,
``puppet_classes``) was stored as JSON ``null`` in a NOT NULL column, and every read of
the role failed. The API now refuses such nulls and reads them as empty; this puts the
stored rows right, so the ENC, the Ansible inventory and boot-time rendering, which read
the columns directly, work on them too.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EMPTY = {"parameters": "{}", "packages": "[]", "puppet_classes": "[]"}


def upgrade() -> None:
    # PostgreSQL's json type has no equality, and a text parameter must be cast to it.
    value = "CAST(:empty AS JSON)" if op.get_bind().dialect.name == "postgresql" else ":empty"
    for column, empty in _EMPTY.items():
        op.execute(
            sa.text(
                f"UPDATE role SET {column} = {value} "  # noqa: S608 (column names are ours)
                f"WHERE CAST({column} AS TEXT) = 'null'"
            ).bindparams(empty=empty)
        )


def downgrade() -> None:
    """Nothing to undo: an empty value is what the API shows for these rows either way."""
