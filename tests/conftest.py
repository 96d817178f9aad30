"""Shared fixtures: a database per test (SQLite always, PostgreSQL when
PROVISIONER_TEST_DATABASE_URL is set), the app, and tokens of each scope."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from provisioner.app import create_app
from provisioner.db import make_engine
from provisioner.logs import OneLine
from provisioner.settings import Settings
from provisioner.tokens import create_token

POSTGRES_URL = os.environ.get("PROVISIONER_TEST_DATABASE_URL")
# The agent ramdisk is built once per session for every test that boots it.
pytest_plugins = ("tests.agent.fixtures",)

POSTGRES_REQUIRED = os.environ.get("PROVISIONER_REQUIRE_POSTGRES") == "1"


@pytest.fixture(autouse=True)
def _service_logging_undone() -> Iterator[None]:
    """`provisioner serve` and `pxe serve` run in-process configure the service's logging
    for the whole process (provisioner/logs.py); the next test starts without it."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("provisioner", "pxe")}
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, OneLine):
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'provisioner.db'}"
    if not POSTGRES_URL:
        if POSTGRES_REQUIRED:
            pytest.fail("PROVISIONER_REQUIRE_POSTGRES=1 but PROVISIONER_TEST_DATABASE_URL is unset")
        pytest.skip("PostgreSQL tests need PROVISIONER_TEST_DATABASE_URL")
    _reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # No background work: API tests see exactly what their requests did.
    return Settings(data_dir=tmp_path / "data", database_url=database_url, reconciler=False)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:  # runs the lifespan: migrations
        yield test_client


@pytest.fixture
def tokens(client: TestClient, app: FastAPI) -> dict[str, str]:
    """One token per scope, keyed by scope."""
    out = {}
    with Session(app.state.services.engine) as session:
        for scope in ("viewer", "operator", "admin"):
            _, out[scope] = create_token(session, name=f"test-{scope}", scope=scope)
    return out


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(tokens: dict[str, str]) -> dict[str, str]:
    return auth(tokens["admin"])


@pytest.fixture
def operator(tokens: dict[str, str]) -> dict[str, str]:
    return auth(tokens["operator"])


@pytest.fixture
def viewer(tokens: dict[str, str]) -> dict[str, str]:
    return auth(tokens["viewer"])


# Two nodes may not share a BMC: each name gets a port of its own, the same one every
# time a test names it (as the lab gives each machine its own port on 127.0.0.1).
_BMC_PORTS: dict[str, int] = {}


def bmc_port(name: str) -> int:
    """The BMC port of node ``name`` in :func:`node_body`."""
    return _BMC_PORTS.setdefault(name, 6230 + len(_BMC_PORTS))


def node_body(
    name: str = "r01-u01", mac: str = "52:54:00:00:01:01", **extra: object
) -> dict[str, object]:
    body: dict[str, object] = {
        "name": name,
        "rack": "r01",
        "bmc": {
            "driver": "ipmi",
            "address": "127.0.0.1",
            "port": bmc_port(name),
            "username": "admin",
            "password": "s3cret-bmc-pw",
        },
        "nics": [{"mac": mac}],
    }
    body.update(extra)
    return body


def snapshot(app: FastAPI) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, to prove a refused request changed nothing."""
    from sqlmodel import SQLModel

    out = {}
    with app.state.services.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            rows = connection.execute(table.select()).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out
