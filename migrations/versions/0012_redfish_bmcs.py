"""Redfish BMCs: how a BMC's TLS certificate is trusted.

``tls_verify`` false turns certificate checks off for one BMC (NULL: the default, on);
``tls_fingerprint`` is the certificate pinned on first contact (``sha256:<hex>``), which
an operator replaces when the BMC's certificate changes. ``driver`` may now also say
``redfish``; the column already holds any registry name.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tls_verify", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("tls_fingerprint", sa.String(length=71), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.drop_column("tls_fingerprint")
        batch_op.drop_column("tls_verify")
