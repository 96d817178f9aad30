"""Every hand-off kind after every way a node gets an installation: provision, reimage,
and release followed by provision. Driven as an operator and the machines would: the
actions through the API, the reconciler tick by tick against fake BMCs, the installer's
boot script, answer file and callbacks through the node-facing routes, and Puppet's and
the webhook receiver's side through their own routes. No deployment row is written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provisioner.bmc.fake import FakeFleet
from tests import flows
from tests.handoff.conftest import DOMAIN, WEBHOOK_SECRET, free_port
from tests.handoff.test_webhooks import Receiver
from tests.test_reconciler import PASSWORD, tick

MAC = "52:54:00:00:97:01"
FQDN = f"n1.{DOMAIN}"

# The service, its fake BMCs and the client are tests/handoff/conftest.py's.


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())
    receiver.start()
    yield receiver
    receiver.stop()


def _state(client: TestClient, operator: dict[str, str]) -> str:
    return flows.state(client, operator, "n1")


def _install(client: TestClient, operator: dict[str, str]) -> str:
    """Be the machine: boot the installer the service serves, read its answer file,
    call back started and done; the reconciler takes the node to ``provisioned``.
    Returns the Puppet challenge the answer file carried."""
    return flows.install(client, operator, "n1", MAC).challenge


def _kinds(client: TestClient, operator: dict[str, str]) -> list[str]:
    events = client.get("/api/v1/nodes/n1/events", headers=operator).json()
    return [e["kind"] for e in events]


def _autosign(client: TestClient, operator: dict[str, str], challenge: str) -> dict[str, Any]:
    body = {"certname": FQDN, "challenge": challenge, "pp_role": "compute"}
    response = client.post("/api/v1/handoff/puppet/autosign", json=body, headers=operator)
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()
    return decision


def _hand_off(
    client: TestClient,
    operator: dict[str, str],
    kind: str,
    challenge: str,
    receiver: Receiver,
) -> None:
    """Do what the configuration stage does for ``kind``, then see the node go active."""
    if kind == "enc":
        tick(client)
        assert _state(client, operator) == "provisioned", "an enc hand-off waits for Puppet"
        assert _autosign(client, operator, challenge)["sign"] is True
        assert _autosign(client, operator, challenge)["sign"] is False  # signs once
        enc = client.get(f"/api/v1/handoff/puppet/enc/{FQDN}", headers=operator)
        assert enc.status_code == 200, enc.text
        assert "role::compute" in enc.text
    elif kind == "webhook":
        sender = flows.services(client.app).webhooks
        before = _delivered(receiver, "node.provisioned")
        for _ in range(50):
            client.portal.call(sender.deliver_due)  # type: ignore[union-attr]
            if _delivered(receiver, "node.provisioned") > before:
                break
        assert _delivered(receiver, "node.provisioned") == before + 1
    flows.tick_until(client, operator, "n1", "active")
    inventory = client.get("/api/v1/handoff/ansible", headers=operator).json()
    assert inventory["role_compute"]["hosts"] == ["n1"]
    assert inventory["_meta"]["hostvars"]["n1"]["ansible_host"] == FQDN


def _delivered(receiver: Receiver, event: str) -> int:
    return sum(payload["event"] == event for payload in receiver.accepted)


def _release(client: TestClient, operator: dict[str, str]) -> None:
    response = client.post("/api/v1/nodes/n1/actions/release", headers=operator)
    assert response.status_code == 202, response.text
    callback = flows.boot(client, operator, "n1", MAC, r"provisioner\.callback=(\S+)").group(1)
    assert client.post(f"{callback}/done").status_code == 200
    flows.tick_until(client, operator, "n1", "ready")


@pytest.mark.parametrize("sequence", ["provision", "reimage", "release-provision"])
@pytest.mark.parametrize("kind", ["immediate", "webhook", "enc"])
def test_every_handoff_after_every_installation(
    client: TestClient,
    admin: dict[str, str],
    operator: dict[str, str],
    fleet: FakeFleet,
    receiver: Receiver,
    kind: str,
    sequence: str,
) -> None:
    role: dict[str, Any] = {"name": "compute", "default_image": "rocky-9", "handoff": kind}
    if kind == "webhook":
        role |= {"webhook_url": receiver.url, "webhook_secret": WEBHOOK_SECRET}
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
    fleet.add("192.0.2.1", users={"admin": PASSWORD})
    enrolled = client.post(
        "/api/v1/nodes",
        json={
            "name": "n1",
            "rack": "r01",
            "role": "compute",
            "bmc": {"address": "192.0.2.1", "username": "admin", "password": PASSWORD},
            "nics": [{"mac": MAC, "pxe": True}],
        },
        headers=operator,
    )
    assert enrolled.status_code == 201, enrolled.text

    # The racking flow: inspected, then provisioned with the role's default image.
    first = _install(client, operator)
    _hand_off(client, operator, kind, first, receiver)

    if sequence == "reimage":
        response = client.post("/api/v1/nodes/n1/actions/reimage", headers=operator)
        assert response.status_code == 202, response.text
        second = _install(client, operator)
        assert second != first, "each installation has a challenge of its own"
        if kind == "enc":
            assert _autosign(client, operator, first)["sign"] is False
        _hand_off(client, operator, kind, second, receiver)
    elif sequence == "release-provision":
        _release(client, operator)
        assert (
            client.get("/api/v1/handoff/ansible", headers=operator)
            .json()
            .get("role_compute", {"hosts": []})["hosts"]
            == []
        )
        if kind == "enc":
            refused = _autosign(client, operator, first)
            assert refused["sign"] is False
            assert "no installation" in refused["reason"]
        response = client.post(
            "/api/v1/nodes/n1/actions/provision", json={"role": "compute"}, headers=operator
        )
        assert response.status_code == 202, response.text
        second = _install(client, operator)
        _hand_off(client, operator, kind, second, receiver)

    kinds = _kinds(client, operator)
    assert kinds.count("handed-off") == (1 if sequence == "provision" else 2)
    assert "fail" not in kinds
    # No Puppet CA is configured here: a node that had a certificate (an enc role's,
    # signed through autosign) gets the command to clean it on its timeline, once per
    # reimage or release, and no other node does.
    advice = [
        e["message"]
        for e in client.get("/api/v1/nodes/n1/events", headers=operator).json()
        if e["kind"] == "puppet-ca"
    ]
    if kind == "enc" and sequence != "provision":
        assert len(advice) == 1
        assert f"run `puppetserver ca clean --certname {FQDN}`" in advice[0]
    else:
        assert advice == []
