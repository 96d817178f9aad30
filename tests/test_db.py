"""Migrations: an empty database migrated to head has exactly the models' schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import provisioner.models  # noqa: F401  (registers the tables)
from provisioner.db import make_engine, upgrade


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def test_head_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    assert _diff(database_url) == []


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(engine)  # idempotent: a restart migrates nothing
    from alembic import command

    from provisioner.db import alembic_config

    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    engine.dispose()
    assert _diff(database_url) == []


def test_sqlite_database_directory_is_created(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "deep" / "er" / "p.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    assert path.exists()


def test_upgrading_keeps_every_row(database_url: str) -> None:
    """Each migration step on a database that holds data: nothing is lost on the way
    (a SQLite table rebuild once cascade-deleted BMCs, NICs and events)."""
    import uuid
    from datetime import UTC, datetime

    from alembic import command
    from alembic.script import ScriptDirectory

    from provisioner.db import alembic_config

    engine = make_engine(database_url)
    config = alembic_config(engine)
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
    first = revisions[-1]
    command.upgrade(config, first)
    node_id = uuid.uuid4()
    now = datetime.now(UTC)
    node_key = node_id.hex if engine.dialect.name == "sqlite" else node_id
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO node (id, name, state, power_state, maintenance, created_at,"
                " updated_at, version) VALUES (:id, 'kept', 'enrolled', 'unknown', false, :now,"
                " :now, 1)"
            ),
            {"id": node_key, "now": now},
        )
        connection.execute(
            text(
                "INSERT INTO bmc (node_id, driver, address, port, username, password_encrypted)"
                " VALUES (:id, 'ipmi', '127.0.0.1', 623, 'admin', 'sealed')"
            ),
            {"id": node_key},
        )
        connection.execute(
            text("INSERT INTO nic (node_id, mac, pxe) VALUES (:id, '52:54:00:00:00:01', true)"),
            {"id": node_key},
        )
        connection.execute(
            text(
                "INSERT INTO event (node_id, time, actor, kind, message)"
                " VALUES (:id, :now, 'test', 'enroll', '')"
            ),
            {"id": node_key, "now": now},
        )
    upgrade(engine)
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in ("node", "bmc", "nic", "event")
        }
        failures = connection.execute(text("SELECT power_failures FROM node")).scalar_one()
    engine.dispose()
    assert counts == {"node": 1, "bmc": 1, "nic": 1, "event": 1}
    assert failures == 0
