"""Alembic environment: the engine comes from the caller (provisioner.db.upgrade) or,
for the ``alembic`` command line, from the service settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

import provisioner.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from provisioner.db import make_engine
from provisioner.settings import get_settings

config = context.config
engine = config.attributes.get("engine") or make_engine(get_settings().resolved_database_url)

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch migrations rebuild a SQLite table by copying and dropping it; with foreign
        # keys on, the drop would cascade-delete every child row (BMCs, NICs, events).
        # The pragma is a no-op inside a transaction, so it is set before one begins.
        connection.execute(text("PRAGMA foreign_keys=OFF"))
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
    if sqlite:
        problems = connection.execute(text("PRAGMA foreign_key_check")).all()
        connection.execute(text("PRAGMA foreign_keys=ON"))
        connection.commit()
        if problems:
            raise RuntimeError(f"migration left rows with broken foreign keys: {problems[:5]}")
