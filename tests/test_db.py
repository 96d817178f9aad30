"""Migrations: an empty database migrated to head has exactly the models' schema."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
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


def test_roles_left_holding_json_null_get_their_empty_values_back(database_url: str) -> None:
    """A PATCH with ``"parameters": null`` once stored JSON null, which broke every read
    of the role (issue 11); migration 0009 mends such rows."""
    from datetime import UTC, datetime

    engine = make_engine(database_url)
    upgrade(engine, "0008")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO role (name, description, auto_provision, puppet_environment,"
                " puppet_classes, parameters, packages, handoff, created_at, updated_at)"
                " VALUES (:name, '', true, 'production', :classes, :null, :null, 'immediate',"
                " :now, :now)"
            ),
            {"name": "broken", "classes": '["role::x"]', "null": "null", "now": datetime.now(UTC)},
        )
    upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT puppet_classes, parameters, packages FROM role WHERE name = 'broken'")
        ).one()
    engine.dispose()
    decoded = [value if isinstance(value, (list, dict)) else json.loads(value) for value in row]
    assert decoded == [["role::x"], {}, []]


def _add_node(connection: Connection, name: str, bmc: tuple[str, int] | None) -> None:
    """A node as the schema before 0010 kept it (not through the API, which refuses a
    shared BMC now), with a BMC at ``bmc``, if given."""
    import uuid
    from datetime import UTC, datetime

    node_id = uuid.uuid4()
    key = node_id.hex if connection.dialect.name == "sqlite" else node_id
    connection.execute(
        text(
            "INSERT INTO node (id, name, state, power_state, maintenance, created_at,"
            " updated_at, version, power_failures, auto_inspect, auto_provision)"
            " VALUES (:id, :name, 'enrolled', 'unknown', false, :now, :now, 1, 0, false, false)"
        ),
        {"id": key, "name": name, "now": datetime.now(UTC)},
    )
    if bmc is not None:
        connection.execute(
            text(
                "INSERT INTO bmc (node_id, driver, address, port, username, password_encrypted)"
                " VALUES (:id, 'ipmi', :address, :port, 'admin', 'sealed')"
            ),
            {"id": key, "address": bmc[0], "port": bmc[1]},
        )


def test_nodes_sharing_a_bmc_stop_the_upgrade_with_what_to_do(
    database_url: str, tmp_path: Path
) -> None:
    """Migration 0010 makes a BMC (address, port) one node's. On a database where nodes
    share one it stops with the nodes and the way out, not the database's bare
    refusal; once they are told apart it goes through, and then holds."""
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError
    from typer.testing import CliRunner

    from provisioner.cli import app as cli

    engine = make_engine(database_url)
    upgrade(engine, "0009")
    with engine.begin() as connection:
        for name, bmc in [
            ("a1", ("10.0.0.5", 623)),
            ("a2", ("10.0.0.5", 623)),
            ("b1", ("127.0.0.1", 6230)),
            ("b2", ("127.0.0.1", 6230)),
            ("b3", ("127.0.0.1", 6230)),
            ("own", ("127.0.0.1", 6231)),
            ("discovered-525400000001", None),
            ("discovered-525400000002", None),
        ]:
            _add_node(connection, name, bmc)
    with pytest.raises(SQLAlchemyError) as refused:
        upgrade(engine)
    message = str(refused.value)
    assert not isinstance(refused.value, IntegrityError)
    assert "\n" not in message  # the CLI shows the first line
    assert "BMC 10.0.0.5 port 623 by nodes 'a1', 'a2'" in message
    assert "BMC 127.0.0.1 port 6230 by nodes 'b1', 'b2', 'b3'" in message
    # A node with a BMC of its own, and nodes with none, are not in question.
    assert "'own'" not in message
    assert "discovered-" not in message
    assert "PATCH /api/v1/nodes/NAME" in message
    assert "then run `provisioner db upgrade` again" in message
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0009"

    if engine.dialect.name == "sqlite":
        # What an operator sees from the command: the sentence, not a traceback.
        env = {"PROVISIONER_DATABASE_URL": database_url, "PROVISIONER_DATA_DIR": str(tmp_path)}
        result = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
        assert result.exit_code == 1
        assert "BMC 127.0.0.1 port 6230 by nodes 'b1', 'b2', 'b3'" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    with engine.begin() as connection:
        for name, port in (("a2", 624), ("b2", 6232), ("b3", 6233)):
            connection.execute(
                text(
                    "UPDATE bmc SET port = :port WHERE node_id ="
                    " (SELECT id FROM node WHERE name = :name)"
                ),
                {"name": name, "port": port},
            )
    upgrade(engine)
    with pytest.raises(IntegrityError), engine.begin() as connection:
        _add_node(connection, "again", ("10.0.0.5", 623))
    engine.dispose()
    assert _diff(database_url) == []


# --- files with secrets: the owner's only (issue 11) ------------------------------------


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_sqlite_files_and_data_directory_are_private_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """The service's database, its WAL files and secret key, as ``create_app`` and the
    migrations on start create them, while the service runs (SQLite removes the WAL
    files when the last connection closes)."""
    from fastapi.testclient import TestClient

    from provisioner.app import create_app
    from provisioner.settings import Settings

    data = tmp_path / "data"
    previous = os.umask(umask)
    try:
        app = create_app(Settings(data_dir=data, database_url=None, reconciler=False))
        with TestClient(app), app.state.services.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = version_num"))
            modes = _modes(data)
    finally:
        os.umask(previous)
    assert modes == {
        "provisioner.db": 0o600,
        "provisioner.db-wal": 0o600,
        "provisioner.db-shm": 0o600,
        "secret.key": 0o600,
    }
    assert _modes(tmp_path)["data"] == 0o700


def test_make_engine_creates_a_private_database_even_under_a_strict_umask(
    tmp_path: Path,
) -> None:
    """A umask that takes the owner's write bit would leave SQLite a file it cannot
    write; ``provisioner db upgrade`` makes the engine the same way."""
    (tmp_path / "db").mkdir()
    previous = os.umask(0o277)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'p.db'}")
        upgrade(engine)
        engine.dispose()
    finally:
        os.umask(previous)
    assert _modes(tmp_path / "db") == {"p.db": 0o600}


@pytest.mark.parametrize(
    ("directory_mode", "database_mode", "commands"),
    [
        (0o755, None, ["chmod go-rw {data}"]),
        (0o770, None, ["chmod go-rw {data}"]),
        (0o700, None, []),
        # Traversable, as nginx serving <data_dir>/images needs, with nothing readable.
        (0o711, None, []),
        # A database an earlier release created with the umask's mode.
        (0o711, 0o644, ["chmod 600 {data}/provisioner.db"]),
    ],
)
def test_start_warns_once_with_the_command_when_secrets_are_open(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    directory_mode: int,
    database_mode: int | None,
    commands: list[str],
) -> None:
    import logging

    from fastapi.testclient import TestClient

    from provisioner.app import create_app
    from provisioner.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(directory_mode)
    settings = Settings(data_dir=data, database_url=None, reconciler=False)
    if database_mode is not None:
        with TestClient(create_app(settings)):
            pass
        (data / "provisioner.db").chmod(database_mode)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="provisioner")
    with TestClient(create_app(settings)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "provisioner.private_files"]
    if not commands:
        assert warnings == []
        return
    [warning] = warnings
    for command in commands:
        assert command.format(data=data.resolve()) in warning, warning
    assert "secret.key" not in warning  # 0600 since it was created


def test_bmcs_from_before_redfish_keep_their_driver_and_verify_tls(database_url: str) -> None:
    """Migration 0012: a BMC stored by 0011 comes through with no TLS policy of its own
    (verify, nothing pinned) and the same driver, port and credentials."""
    import uuid
    from datetime import UTC, datetime

    engine = make_engine(database_url)
    upgrade(engine, "0011")
    node_id = uuid.uuid4()
    node_key = node_id.hex if engine.dialect.name == "sqlite" else node_id
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO node (id, name, state, power_state, maintenance, created_at,"
                " updated_at, version, power_failures) VALUES (:id, 'old', 'enrolled',"
                " 'unknown', false, :now, :now, 1, 0)"
            ),
            {"id": node_key, "now": datetime.now(UTC)},
        )
        connection.execute(
            text(
                "INSERT INTO bmc (node_id, driver, address, port, username, password_encrypted)"
                " VALUES (:id, 'ipmi', '10.0.0.5', 623, 'admin', 'sealed')"
            ),
            {"id": node_key},
        )
    upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT driver, port, username, tls_verify, tls_fingerprint FROM bmc")
        ).one()
    engine.dispose()
    assert tuple(row) == ("ipmi", 623, "admin", None, None)
