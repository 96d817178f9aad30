"""Every hand-off kind after every way a node gets an installation: provision, reimage,
and release followed by provision. Driven as an operator and the machines would: the
actions through the API, the reconciler tick by tick against fake BMCs, the installer's
boot script, answer file and callbacks through the node-facing routes, and Puppet's and
the webhook receiver's side through their own routes. No deployment row is written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.bmc.fake import FakeFleet
from provisioner.settings import Settings
from tests.handoff.conftest import DOMAIN, WEBHOOK_SECRET, free_port
from tests.handoff.test_webhooks import Receiver
from tests.test_reconciler import PASSWORD, node, tick

MAC = "52:54:00:00:97:01"
FQDN = f"n1.{DOMAIN}"


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def app(tmp_path: Path, database_url: str, fleet: FakeFleet) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_on_rate=1000,
        domain=DOMAIN,
        puppet_server=f"puppet.{DOMAIN}",
        webhook_timeout=2.0,
        webhook_retry_base=0.05,
        webhook_retry_max=0.2,
        wipe_kernel_url="https://images.example/wipe/vmlinuz",
        wipe_initrd_url="https://images.example/wipe/initrd",
    )
    return create_app(settings, driver_factory=fleet.driver)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())
    receiver.start()
    yield receiver
    receiver.stop()


def _state(client: TestClient, operator: dict[str, str]) -> str:
    state: str = node(client, operator, "n1")["state"]
    return state


def _tick_until(
    client: TestClient, operator: dict[str, str], done: Callable[[], bool], what: str
) -> None:
    for _ in range(30):
        if done():
            return
        tick(client)
    raise AssertionError(f"n1 never got {what}; it is {_state(client, operator)}")


def _install(client: TestClient, operator: dict[str, str]) -> str:
    """Be the machine: boot the installer the service serves, read its answer file,
    call back started and done; the reconciler takes the node to ``provisioned``.
    Returns the Puppet challenge the answer file carried."""
    token = _boot(client, operator, r"/boot/answers/([A-Za-z0-9_-]+)")
    answers = client.get(f"/boot/answers/{token.group(1)}")
    assert answers.status_code == 200, answers.text
    challenge = re.search(r"challengePassword: ['\"]?([A-Za-z0-9_-]+)", answers.text)
    assert challenge, answers.text
    assert client.post(f"/callback/{token.group(1)}/started").status_code == 200
    assert client.post(f"/callback/{token.group(1)}/done").status_code == 200
    _tick_until(client, operator, lambda: _state(client, operator) == "provisioned", "provisioned")
    return challenge.group(1)


def _boot(client: TestClient, operator: dict[str, str], token: str) -> re.Match[str]:
    """Wait for the reconciler to power the machine on for its new deployment, then
    network-boot it; returns where ``token`` matched in the boot script."""
    before = _powered_on(client, operator)
    _tick_until(
        client, operator, lambda: _powered_on(client, operator) > before, "powered on to boot"
    )
    script = client.get("/boot/ipxe", params={"mac": MAC}).text
    found = re.search(token, script)
    assert found, script
    return found


def _powered_on(client: TestClient, operator: dict[str, str]) -> int:
    events = client.get("/api/v1/nodes/n1/events", headers=operator).json()
    return sum(e["message"].startswith("powered on to boot") for e in events)


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
        sender = client.app.state.webhooks  # type: ignore[attr-defined]
        before = _delivered(receiver, "node.provisioned")
        for _ in range(50):
            client.portal.call(sender.deliver_due)  # type: ignore[union-attr]
            if _delivered(receiver, "node.provisioned") > before:
                break
        assert _delivered(receiver, "node.provisioned") == before + 1
    _tick_until(client, operator, lambda: _state(client, operator) == "active", "active")
    inventory = client.get("/api/v1/handoff/ansible", headers=operator).json()
    assert inventory["role_compute"]["hosts"] == ["n1"]
    assert inventory["_meta"]["hostvars"]["n1"]["ansible_host"] == FQDN


def _delivered(receiver: Receiver, event: str) -> int:
    return sum(payload["event"] == event for payload in receiver.accepted)


def _release(client: TestClient, operator: dict[str, str]) -> None:
    response = client.post("/api/v1/nodes/n1/actions/release", headers=operator)
    assert response.status_code == 202, response.text
    callback = _boot(client, operator, r"provisioner\.callback=(\S+)").group(1)
    assert client.post(f"{callback}/done").status_code == 200
    _tick_until(client, operator, lambda: _state(client, operator) == "ready", "ready")


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
