"""Fixtures for the hand-off tests: a service with a domain, a Puppet server and fast
webhook retries in front of fake BMCs, nodes installed through the real actions and the
reconciler, and the service on a real port for the CLI and the real ansible-inventory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import deployments
from provisioner.app import create_app
from provisioner.bmc.fake import FakeFleet
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests import flows
from tests.conftest import auth
from tests.test_reconciler import PASSWORD

DOMAIN = "lab.example"
WEBHOOK_SECRET = "whsec-Zq8m2Lp4Xv7Rt1Ny"
BIN = Path(sys.executable).parent
IMAGE = "rocky-9"
# The hardware profile inspection finds on every fake machine (FakeFleet's FRU data).
PROFILE = "lab-small"
# A node installed for `install(..., role=None)` is provisioned with this role, which
# is then taken off it: provisioning needs a role.
UNASSIGNED = "unassigned"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE}.yaml").write_text(
        f"name: {PROFILE}\n"
        "description: The fake BMCs' machines (provisioner.bmc.fake)\n"
        "priority: 100\n"
        "match:\n"
        '  vendor: ["^Fake Systems$"]\n'
        "boot_mode: uefi\n"
        "console: {port: ttyS0, speed: 115200}\n"
    )
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_on_rate=1000,
        profiles_dir=profiles,
        domain=DOMAIN,
        puppet_server=f"puppet.{DOMAIN}",
        webhook_timeout=2.0,
        webhook_retry_base=0.05,
        webhook_retry_max=0.2,
        wipe_kernel_url="https://images.example/wipe/vmlinuz",
        wipe_initrd_url="https://images.example/wipe/initrd",
    )


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def app(settings: Settings, fleet: FakeFleet) -> FastAPI:
    # The loops stay off: install() and the tests drive the reconciler tick by tick.
    return create_app(settings, driver_factory=fleet.driver)


@dataclass(frozen=True)
class Installed:
    node_id: uuid.UUID
    deployment_id: uuid.UUID | None
    """The installation's deployment; None for a node asked for at ``ready``."""
    challenge: str | None
    """The Puppet challenge its answer file carried; None for a node never installed."""


@dataclass(frozen=True)
class _Tokens:
    viewer: dict[str, str]
    operator: dict[str, str]
    admin: dict[str, str]


_tokens: weakref.WeakKeyDictionary[Any, _Tokens] = weakref.WeakKeyDictionary()


def _headers(client: TestClient) -> _Tokens:
    """Tokens install() acts with, made once per app."""
    app = client.app
    if app not in _tokens:
        with Session(flows.services(app).engine) as session:
            made = {
                scope: auth(create_token(session, name=f"install-{scope}", scope=scope)[1])
                for scope in ("viewer", "operator", "admin")
            }
        _tokens[app] = _Tokens(**made)
    return _tokens[app]


def _ok(response: Any, status: int) -> dict[str, Any]:
    """The JSON body of a response that has ``status``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def _ensure_role(client: TestClient, tokens: _Tokens, role: str) -> dict[str, Any]:
    found = client.get(f"/api/v1/roles/{role}", headers=tokens.viewer)
    if found.status_code == 404:
        body = {"name": role, "handoff": "immediate"}
        return _ok(client.post("/api/v1/roles", json=body, headers=tokens.admin), 201)
    return _ok(found, 200)


def install(
    client: TestClient,
    fleet: FakeFleet,
    name: str,
    role: str | None,
    *,
    rack: str | None = "r01",
    unit: int | None = None,
    state: str = "provisioned",
    boot_ip: str | None = None,
) -> Installed:
    """A node taken to ``state`` the way it gets there in a rack: enrolled through the
    API with a fake BMC and a PXE NIC, inspected by the reconciler, provisioned with
    ``role`` and image rocky-9, its machine booted (from ``boot_ip``) and its installer
    calling back, the reconciler ticked until the node is ``provisioned``; for
    ``active``, the role's hand-off done as Puppet or the webhook receiver would. A node
    asked for at ``ready`` is only inspected (and given ``role``). A node that exists is
    reimaged. A role that does not exist is created (hand-off immediate); with no role,
    the node is provisioned as role ``unassigned`` and then has its role cleared.

    The reconciler works on every node at each tick: an ``immediate`` role's node left at
    ``provisioned`` goes ``active`` when the next node is installed."""
    assert state in ("ready", "provisioned", "active"), state
    tokens = _headers(client)
    operator = tokens.operator
    found = client.get(f"/api/v1/nodes/{name}", headers=operator)
    if found.status_code == 404:
        n = len(fleet.bmcs) + 1
        address = f"192.0.2.{n}"
        fleet.add(address, users={"admin": PASSWORD})
        mac = f"52:54:00:00:98:{n:02x}"
        body = {
            "name": name,
            "rack": rack,
            "rack_unit": unit,
            "bmc": {"address": address, "username": "admin", "password": PASSWORD},
            "nics": [{"mac": mac, "pxe": True}],
        }
        # Enrolled without a role, so the racking flow stops at `ready`.
        enrolled = _ok(client.post("/api/v1/nodes", json=body, headers=operator), 201)
        flows.tick_until(client, operator, name, "ready")
        if state == "ready":
            if role is not None:
                _ensure_role(client, tokens, role)
                patch = client.patch(f"/api/v1/nodes/{name}", json={"role": role}, headers=operator)
                _ok(patch, 200)
            return Installed(uuid.UUID(enrolled["id"]), None, None)
        action = "provision"
    else:
        assert state != "ready", f"{name} exists; install() takes a node to ready only once"
        enrolled = _ok(found, 200)
        mac = next(nic["mac"] for nic in enrolled["nics"] if nic["pxe"])
        action = "reimage" if enrolled["state"] in ("provisioned", "active") else "provision"
    chosen = role or UNASSIGNED
    _ensure_role(client, tokens, chosen)
    started = client.post(
        f"/api/v1/nodes/{name}/actions/{action}",
        json={"role": chosen, "image": IMAGE},
        headers=operator,
    )
    _ok(started, 202)
    address = boot_ip or f"10.0.0.{100 + int(mac[-2:], 16)}"
    installation = flows.install(client, operator, name, mac, address)
    if role is None:
        patch = client.patch(f"/api/v1/nodes/{name}", json={"role": None}, headers=operator)
        _ok(patch, 200)
    if state == "active":
        _hand_off(client, tokens, name, role)
        flows.tick_until(client, operator, name, "active")
    node_id = uuid.UUID(enrolled["id"])
    with Session(flows.services(client.app).engine) as session:
        deployment = deployments.installation(session, node_id)
        assert deployment is not None
    return Installed(node_id, deployment.id, installation.challenge)


def _hand_off(client: TestClient, tokens: _Tokens, name: str, role: str | None) -> None:
    """Do what completes the role's hand-off: Puppet's ENC fetch, or the webhook
    receiver's acknowledgement of ``node.provisioned`` (the receiver must be up)."""
    found = client.get(f"/api/v1/roles/{role}", headers=tokens.viewer) if role else None
    handoff = _ok(found, 200)["handoff"] if found is not None else "immediate"
    if handoff == "enc":
        certname = f"{name}.{DOMAIN}"
        fetched = client.get(f"/api/v1/handoff/puppet/enc/{certname}", headers=tokens.viewer)
        assert fetched.status_code == 200, fetched.text
    elif handoff == "webhook":
        sender = flows.services(client.app).webhooks

        def delivered() -> bool:
            client.portal.call(sender.deliver_due)  # type: ignore[union-attr]
            return flows.state(client, tokens.operator, name) == "active"

        what = "active (is the role's webhook receiver up?)"
        flows.tick_until(client, tokens.operator, name, delivered, what)


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
def live(app: FastAPI, client: TestClient) -> Iterator[Live]:
    """The service on a real port too (uvicorn in a thread), with a token of each scope.

    The app's lifespan runs once, in ``client``: run again by uvicorn, it would start a
    second set of background loops on a second event loop, and the two would contend
    for the app's loop-bound locks (seen as "bound to a different event loop")."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    with Session(flows.services(app).engine) as session:
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
