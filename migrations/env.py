"""Alembic environment: the engine comes from the caller (provisioner.db.upgrade) or,
for the ``alembic`` command line, from the service settings."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import provisioner.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from provisioner.db import make_engine
from provisioner.settings import get_settings

config = context.config
engine = config.attributes.get("engine") or make_engine(get_settings().resolved_database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
