"""Release without a wipe image (issue 11): refused with the settings to fill in, or,
with ``skip_wipe``, the node returned to ``ready`` at once without a wipe and the
operator's choice on its timeline; a wipe that cannot boot fails instead of waiting.
Through the real actions and the reconciler, against fake BMCs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from provisioner.bmc.base import BootDevice
from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.models import Deployment
from tests import flows
from tests.test_deploying import enroll, make_app, ticks, token_of
from tests.test_reconciler import kinds, node, tick

WIPE = {
    "wipe_kernel_url": "https://images.example/wipe/vmlinuz",
    "wipe_initrd_url": "https://images.example/wipe/initrd",
}


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def app(tmp_path: Path, database_url: str, fleet: FakeFleet) -> FastAPI:
    # No wipe image, as a service is out of the box.
    return make_app(tmp_path, database_url, fleet)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _active(client: TestClient, admin: dict[str, str], fleet: FakeFleet, n: int) -> FakeBmc:
    """Node ``n<n>`` taken to active as role compute: racked, installed, handed off."""
    role = {"name": "compute", "default_image": "rocky-9"}
    if client.get("/api/v1/roles/compute", headers=admin).status_code == 404:
        assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
    fake = enroll(client, admin, fleet, f"n{n}", n, role="compute")
    ticks(client, 5)  # inspect, provision, network, power, install (waits)
    token = token_of(client, n)
    assert client.post(f"/callback/{token}/done").status_code == 200
    flows.tick_until(client, admin, f"n{n}", "active")
    return fake


def _deployments(app: FastAPI) -> int:
    with Session(app.state.services.engine) as session:
        return session.exec(select(func.count()).select_from(Deployment)).one()


def _fail_wiping(
    client: TestClient, app: FastAPI, admin: dict[str, str], name: str
) -> dict[str, Any]:
    """Release ``name`` while a wipe image is set, then carry the release out without
    one (the settings changed since, or another replica has none): the node as then."""
    settings = app.state.services.settings
    for key, value in WIPE.items():
        setattr(settings, key, value)
    released = client.post(f"/api/v1/nodes/{name}/actions/release", headers=admin)
    assert released.status_code == 202, released.text
    for key in WIPE:
        setattr(settings, key, None)
    tick(client)
    return node(client, admin, name)


def test_release_without_a_wipe_image_is_refused_naming_the_settings(
    client: TestClient, app: FastAPI, admin: dict[str, str], fleet: FakeFleet
) -> None:
    """Once it left a node in wiping for good; a retry of a failed wipe is a wipe too."""
    _active(client, admin, fleet, 1)
    enroll(client, admin, fleet, "n2", 2)
    tick(client)
    _fail_wiping(client, app, admin, "n2")
    before = _deployments(app)
    single = client.post("/api/v1/nodes/n1/actions/release", headers=admin)
    bulk = client.post(
        "/api/v1/actions",
        json={"action": "release", "selection": {"names": ["n1"]}},
        headers=admin,
    )
    retry = client.post("/api/v1/nodes/n2/actions/retry", headers=admin)
    for refused in (single, bulk, retry):
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        for named in ("PROVISIONER_WIPE_KERNEL_URL", "PROVISIONER_WIPE_INITRD_URL"):
            assert named in detail
        assert '"skip_wipe": true' in detail
        assert "--skip-wipe" in detail
    assert node(client, admin, "n1")["state"] == "active"
    assert node(client, admin, "n2")["state"] == "failed"
    assert _deployments(app) == before
    assert "release" not in kinds(client, admin, "n1")


def test_release_with_skip_wipe_is_ready_at_once_and_says_so(
    client: TestClient, app: FastAPI, admin: dict[str, str], fleet: FakeFleet
) -> None:
    fake = _active(client, admin, fleet, 1)
    boots, deployments = list(fake.boots), _deployments(app)
    response = client.post(
        "/api/v1/nodes/n1/actions/release",
        json={"skip_wipe": True, "reason": "lent to the storage team"},
        headers=admin,
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "ready"
    last = client.get("/api/v1/nodes/n1/events", headers=admin).json()[-1]
    assert (last["kind"], last["from_state"], last["to_state"]) == (
        "wipe-skipped",
        "active",
        "ready",
    )
    assert last["actor"] == "test-admin"
    assert "without a wipe" in last["message"]
    assert "chose explicitly (skip_wipe)" in last["message"]
    assert last["message"].endswith(": lent to the storage team")
    # Nothing for the reconciler to do: no wipe, no power or boot device change.
    ticks(client, 3)
    assert node(client, admin, "n1")["state"] == "ready"
    assert (fake.boots, fake.power) == (boots, "on")
    assert _deployments(app) == deployments
    # Not its role's any longer for Puppet, though it keeps the role for next time.
    enc = yaml.safe_load(client.get("/api/v1/handoff/puppet/enc/n1", headers=admin).text)
    assert enc["classes"] == {}
    assert "role" not in enc["parameters"]
    assert node(client, admin, "n1")["role"] == "compute"
    # And it can be installed again.
    again = client.post("/api/v1/nodes/n1/actions/provision", headers=admin)
    assert again.status_code == 202, again.text

    # The bulk path takes skip_wipe too.
    _active(client, admin, fleet, 2)
    bulk = client.post(
        "/api/v1/actions",
        json={"action": "release", "skip_wipe": True, "selection": {"names": ["n2"]}},
        headers=admin,
    )
    assert bulk.status_code == 202, bulk.text
    assert bulk.json()["accepted"] == ["n2"]
    assert kinds(client, admin, "n2")[-1] == "wipe-skipped"
    assert node(client, admin, "n2")["state"] == "ready"


def test_skip_wipe_on_any_other_action_is_422(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet
) -> None:
    enroll(client, admin, fleet, "n1", 1)
    single = client.post(
        "/api/v1/nodes/n1/actions/inspect", json={"skip_wipe": True}, headers=admin
    )
    bulk = client.post(
        "/api/v1/actions",
        json={"action": "inspect", "skip_wipe": True, "selection": {"names": ["n1"]}},
        headers=admin,
    )
    for refused in (single, bulk):
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"] == [
            {"field": "skip_wipe", "message": "applies to release only"}
        ]
    assert kinds(client, admin, "n1") == ["enroll"]


def test_a_wipe_with_no_image_to_boot_fails_at_once_and_skip_wipe_frees_it(
    client: TestClient, app: FastAPI, admin: dict[str, str], fleet: FakeFleet
) -> None:
    """A release accepted while a wipe image was set, carried out without one: the node
    fails with what to do, instead of waiting in wiping for a callback that cannot
    come."""
    fake = enroll(client, admin, fleet, "n1", 1)
    tick(client)  # inspected -> ready
    failed = _fail_wiping(client, app, admin, "n1")
    assert (failed["state"], failed["failed_from"]) == ("failed", "wiping")
    assert re.search(r"PROVISIONER_WIPE_KERNEL_URL.*skip_wipe", failed["last_error"])
    assert BootDevice.NETWORK not in fake.boots
    # Releasing without a wipe is the way out.
    freed = client.post("/api/v1/nodes/n1/actions/release", json={"skip_wipe": True}, headers=admin)
    assert freed.status_code == 202, freed.text
    after = node(client, admin, "n1")
    assert (after["state"], after["last_error"]) == ("ready", None)
