"""Fixtures for the hand-off tests: a service with a domain and fast webhook retries,
nodes that have been installed, and the service on a real port for the CLI and the
real ansible-inventory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session, col, select

from provisioner import deployments
from provisioner.models import Deployment, Node, utcnow
from provisioner.settings import Settings
from provisioner.tokens import create_token

DOMAIN = "lab.example"
WEBHOOK_SECRET = "whsec-Zq8m2Lp4Xv7Rt1Ny"
BIN = Path(sys.executable).parent


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        domain=DOMAIN,
        webhook_timeout=2.0,
        webhook_retry_base=0.05,
        webhook_retry_max=0.2,
    )


@dataclass(frozen=True)
class Installed:
    node_id: uuid.UUID
    deployment_id: uuid.UUID
    challenge: str


def install(
    app: FastAPI,
    name: str,
    role: str | None,
    *,
    rack: str | None = "r01",
    unit: int | None = None,
    state: str = "provisioned",
) -> Installed:
    """A node the way the reconciler leaves it after a finished installation."""
    engine, vault = app.state.engine, app.state.vault
    with Session(engine, expire_on_commit=False) as session:
        node = session.exec(select(Node).where(Node.name == name)).first()
        if node is None:
            node = Node(name=name, rack=rack, rack_unit=unit, state=state)
        node.role, node.image, node.state = role, "rocky-9", state
        node.hardware_profile = "lab-small"
        session.add(node)
        session.commit()
        deployments.start(session, vault, node.id, "provision", role, "rocky-9", 3600)
        session.commit()
        deployment = session.exec(
            select(Deployment)
            .where(col(Deployment.node_id) == node.id)
            .order_by(col(Deployment.created_at).desc())
        ).first()
        assert deployment is not None
        deployment.status = "done"
        deployment.finished_at = utcnow() + timedelta(microseconds=1)
        session.add(deployment)
        session.commit()
        return Installed(node.id, deployment.id, vault.decrypt(deployment.challenge_encrypted))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Live:
    url: str
    viewer: str
    operator: str
    admin: str


@pytest.fixture
def live(app: FastAPI) -> Iterator[Live]:
    """The service on a real port (uvicorn in a thread), with a token of each scope."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    with Session(app.state.engine) as session:
        tokens = {
            scope: create_token(session, name=f"handoff-{scope}", scope=scope)[1]
            for scope in ("viewer", "operator", "admin")
        }
    yield Live(url, **tokens)
    server.should_exit = True
    thread.join(timeout=10)


def cli(
    live: Live, *args: str, token: str | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """The installed ``provisioner`` command, run the way Puppet and Ansible run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_URL": live.url, "PROVISIONER_TOKEN": token or live.operator}
    return subprocess.run(
        [str(BIN / "provisioner"), *args], input=stdin, capture_output=True, env=env, timeout=60
    )
