"""Role webhooks against a real HTTP receiver that checks the signature and is down for
a while: every event arrives, once, in order per node, across a restart of the sender."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from provisioner import handoff
from provisioner.bmc.fake import FakeFleet
from provisioner.handoff.webhooks import WebhookSender
from provisioner.models import Deployment, Node, WebhookDelivery
from tests import flows
from tests.handoff.conftest import WEBHOOK_SECRET, free_port, install


@dataclass
class Receiver:
    """A webhook endpoint: verifies the HMAC, answers 503 while ``failing``, and keeps
    every request it acknowledged."""

    port: int
    failing: bool = False
    accepted: list[dict[str, object]] = field(default_factory=list)
    refused: int = 0
    bad_signatures: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
                signature = self.headers.get("X-Provisioner-Signature", "")
                if not hmac.compare_digest(signature, f"sha256={expected}"):
                    receiver.bad_signatures += 1
                    status = 401
                elif receiver.failing:
                    receiver.refused += 1
                    status = 503
                else:
                    payload = json.loads(body)
                    assert payload["delivery"] == self.headers["X-Provisioner-Delivery"]
                    assert payload["event"] == self.headers["X-Provisioner-Event"]
                    receiver.accepted.append(payload)
                    status = 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())
    yield receiver
    receiver.stop()


@pytest.fixture
def hooked(client: TestClient, admin: dict[str, str], receiver: Receiver) -> None:
    role = {
        "name": "compute",
        "handoff": "webhook",
        "webhook_url": receiver.url,
        "webhook_secret": WEBHOOK_SECRET,
    }
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201


def _provision(client: TestClient, fleet: FakeFleet, names: list[str]) -> list[uuid.UUID]:
    """Nodes reaching `provisioned`: the reconciler requests their hand-off."""
    app = client.app
    out = []
    for name in names:
        installed = install(client, fleet, name, "compute")
        assert installed.deployment_id is not None
        services = flows.services(app)
        with Session(services.engine) as session:
            node = session.get(Node, installed.node_id)
            deployment = session.get(Deployment, installed.deployment_id)
            assert node is not None
            assert deployment is not None
            # The reconciler began the hand-off; a repeat adds nothing.
            handoff.begin(session, services.vault, node, deployment)
            session.commit()
        out.append(installed.deployment_id)
    return out


def _notify(app: FastAPI, name: str, event: str) -> None:
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node).where(Node.name == name)).one()
        handoff.notify(session, app.state.services.vault, node, event, None)
        session.commit()


def _completed(app: FastAPI, deployment_id: uuid.UUID) -> bool:
    with Session(app.state.services.engine) as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        node = session.get(Node, deployment.node_id)
        assert node is not None
        return handoff.completed(session, node, deployment)


def _deliver_all(senders: list[WebhookSender], expected: int, within: float = 15.0) -> int:
    async def rounds() -> int:
        delivered = 0
        deadline = time.monotonic() + within
        while delivered < expected and time.monotonic() < deadline:
            results = await asyncio.gather(*(sender.deliver_due() for sender in senders))
            delivered += sum(results)
            await asyncio.sleep(0.02)
        return delivered

    return asyncio.run(rounds())


def _stored(app: FastAPI) -> list[WebhookDelivery]:
    with Session(app.state.services.engine) as session:
        return list(session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id))))


@pytest.mark.usefixtures("hooked")
def test_receiver_down_then_back_gets_every_event_once_in_order(
    client: TestClient,
    app: FastAPI,
    fleet: FakeFleet,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    names = ["r01-u01", "r01-u02", "r01-u03"]
    deployment_ids = _provision(client, fleet, names)
    for name in names[:2]:
        _notify(app, name, "node.active")
    _notify(app, names[2], "node.failed")
    assert not any(_completed(app, d) for d in deployment_ids)

    # Not listening at all, then answering 503: nothing is lost, nothing is delivered.
    settings = app.state.services.settings
    first = WebhookSender(app.state.services.engine, app.state.services.vault, settings)
    assert _deliver_all([first], expected=1, within=0.5) == 0
    receiver.failing = True
    receiver.start()
    assert _deliver_all([first], expected=1, within=1.0) == 0
    assert receiver.refused >= 3
    rows = _stored(app)
    assert all(r.delivered_at is None for r in rows)
    # A node's later events wait for its first: only the first of each node was tried.
    tried = [r for r in rows if r.attempts]
    assert {r.event for r in tried} == {"node.provisioned"}
    assert len(tried) == 3
    assert all(r.last_error and "503" in r.last_error for r in tried)

    # The service restarts (a new sender) and the receiver recovers.
    receiver.failing = False
    second = WebhookSender(app.state.services.engine, app.state.services.vault, settings)
    assert _deliver_all([second], expected=6) == 6
    assert receiver.bad_signatures == 0
    keys = [str(p["delivery"]) for p in receiver.accepted]
    assert sorted(keys) == sorted(r.idempotency_key for r in rows)
    assert len(set(keys)) == len(keys) == 6
    by_node: dict[str, list[object]] = {}
    for payload in receiver.accepted:
        by_node.setdefault(payload["node"]["name"], []).append(payload["event"])  # type: ignore[index]
    assert by_node == {
        "r01-u01": ["node.provisioned", "node.active"],
        "r01-u02": ["node.provisioned", "node.active"],
        "r01-u03": ["node.provisioned", "node.failed"],
    }
    assert all(_completed(app, d) for d in deployment_ids)
    assert _deliver_all([second], expected=1, within=0.3) == 0  # nothing twice
    assert "not delivered" in caplog.text
    assert WEBHOOK_SECRET not in caplog.text


@pytest.mark.usefixtures("hooked")
def test_replicas_share_the_outbox_without_sending_twice(
    client: TestClient, app: FastAPI, fleet: FakeFleet, receiver: Receiver
) -> None:
    receiver.start()
    names = [f"r01-u{i:02}" for i in range(1, 9)]
    _provision(client, fleet, names)
    for name in names:
        _notify(app, name, "node.active")
    services = app.state.services
    settings, engine, vault = services.settings, services.engine, services.vault
    replicas = [WebhookSender(engine, vault, settings) for _ in range(3)]
    assert _deliver_all(replicas, expected=16) == 16
    keys = [p["delivery"] for p in receiver.accepted]
    assert len(keys) == len(set(keys)) == 16


def test_other_roles_send_nothing_and_hand_off_at_once(
    client: TestClient, app: FastAPI, fleet: FakeFleet, admin: dict[str, str]
) -> None:
    client.post("/api/v1/roles", json={"name": "compute"}, headers=admin)
    (deployment_id,) = _provision(client, fleet, ["r01-u01"])
    _notify(app, "r01-u01", "node.active")
    assert _stored(app) == []
    assert _completed(app, deployment_id)
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node)).one()
        with pytest.raises(ValueError, match="notify takes"):
            handoff.notify(session, app.state.services.vault, node, "node.provisioned", None)


@pytest.mark.usefixtures("hooked")
def test_a_role_without_secret_waits_and_says_why(
    client: TestClient,
    app: FastAPI,
    fleet: FakeFleet,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.start()
    _provision(client, fleet, ["r01-u01"])
    with Session(app.state.services.engine) as session:
        from provisioner.models import Role

        role = session.get(Role, "compute")
        assert role is not None
        role.webhook_secret_encrypted = None
        session.add(role)
        session.commit()
    services = app.state.services
    sender = WebhookSender(services.engine, services.vault, services.settings)
    assert _deliver_all([sender], expected=1, within=0.3) == 0
    assert receiver.accepted == []
    assert receiver.refused == 0
    (row,) = _stored(app)
    assert row.last_error is not None
    assert "has no webhook secret" in row.last_error
