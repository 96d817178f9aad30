"""BMC passwords are encrypted at rest; passwords and tokens never reach responses or logs."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from provisioner.secrets import Vault, load_or_create_key
from provisioner.settings import Settings
from tests.conftest import auth, node_body

PASSWORD = "Zq7-bmc-Secret"


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    key = load_or_create_key(settings)
    path = tmp_path / "d" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(settings) == key
    vault = Vault(key)
    assert vault.decrypt(vault.encrypt("pw")) == "pw"


def test_a_data_directory_the_key_creates_is_the_owners_only(tmp_path: Path) -> None:
    """With PostgreSQL nothing else creates the data directory: the key file does."""
    old = os.umask(0o022)
    try:
        load_or_create_key(Settings(data_dir=tmp_path / "new" / "data"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "data").stat().st_mode) == 0o700


def test_wrong_key_gives_a_clear_error(tmp_path: Path) -> None:
    sealed = Vault(load_or_create_key(Settings(data_dir=tmp_path / "a"))).encrypt("pw")
    other = Vault(load_or_create_key(Settings(data_dir=tmp_path / "b")))
    with pytest.raises(ValueError, match="secret key differs"):
        other.decrypt(sealed)


def test_secrets_stay_out_of_responses_logs_and_the_database(
    client: TestClient,
    app: FastAPI,
    admin: dict[str, str],
    operator: dict[str, str],
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # logs SQL parameters
    seen = []
    body = node_body()
    body["bmc"]["password"] = PASSWORD  # type: ignore[index]
    seen.append(client.post("/api/v1/nodes", json=body, headers=operator))
    seen.append(client.get("/api/v1/nodes", headers=operator))
    seen.append(client.get("/api/v1/nodes/r01-u01", headers=operator))
    seen.append(
        client.patch(
            "/api/v1/nodes/r01-u01", json={"bmc": {"password": PASSWORD + "2"}}, headers=operator
        )
    )
    seen.append(client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator))
    seen.append(client.get("/api/v1/nodes/r01-u01/events", headers=operator))
    # Refused requests must not echo the password either.
    bad = node_body(name="bad", mac="52:54:00:00:05:05")
    bad["bmc"]["password"] = PASSWORD + "-long-enough-to-be-refused"  # type: ignore[index]
    seen.append(client.post("/api/v1/nodes", json=bad, headers=operator))
    bad_port = node_body(name="bad2", mac="52:54:00:00:05:06")
    bmc = bad_port["bmc"]
    assert isinstance(bmc, dict)
    bmc.update(port="x", password=PASSWORD)
    seen.append(client.post("/api/v1/nodes", json=bad_port, headers=operator))
    created = client.post("/api/v1/tokens", json={"name": "t", "scope": "viewer"}, headers=admin)
    new_token = created.json()["token"]
    seen.append(client.get("/api/v1/tokens", headers=admin))
    seen.append(client.get("/api/v1/nodes", headers=auth(new_token)))
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

    secrets = [PASSWORD, *tokens.values(), new_token]
    for response in seen:
        for secret in secrets:
            assert secret not in response.text
    assert caplog.records, "expected the service to log something"
    for secret in secrets:
        assert secret not in caplog.text

    with app.state.services.engine.connect() as connection:
        dump = "\n".join(
            repr(row)
            for table in ("bmc", "api_token", "event", "node")
            for row in connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
        )
    for secret in secrets:
        assert secret not in dump
    node_id = uuid.UUID(seen[0].json()["id"])
    with app.state.services.engine.connect() as connection:
        sealed = connection.execute(
            text("SELECT password_encrypted FROM bmc WHERE node_id = :id"),
            {"id": node_id.hex if app.state.services.engine.dialect.name == "sqlite" else node_id},
        ).scalar_one()
    assert app.state.services.vault.decrypt(sealed) == PASSWORD + "2"
