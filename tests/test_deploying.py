"""Provisioning, reimage and wipe carried out by the reconciler, step by step, against
fake BMCs; the installer's callbacks are made through the real routes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session

from provisioner.app import create_app
from provisioner.bmc.base import BmcError, BootDevice, ErrorKind
from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.models import Deployment, Node, table_of
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests.conftest import auth
from tests.test_reconciler import PASSWORD, kinds, node, tick


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


def make_app(tmp_path: Path, database_url: str, fleet: FakeFleet, **overrides: Any) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_on_rate=1000,
        **overrides,
    )
    return create_app(settings, driver_factory=fleet.driver)


@pytest.fixture
def app(tmp_path: Path, database_url: str, fleet: FakeFleet) -> FastAPI:
    return make_app(tmp_path, database_url, fleet)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def compute(client: TestClient, admin: dict[str, str]) -> None:
    role = {"name": "compute", "default_image": "rocky-9"}
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201


def enroll(
    client: TestClient,
    headers: dict[str, str],
    fleet: FakeFleet,
    name: str,
    n: int,
    **extra: Any,
) -> FakeBmc:
    address = f"192.0.2.{n}"
    fake = fleet.add(address, users={"admin": PASSWORD})
    body = {
        "name": name,
        "rack": "r01",
        "bmc": {"address": address, "username": "admin", "password": PASSWORD},
        "nics": [{"mac": f"52:54:00:00:98:{n:02x}", "pxe": True}],
        **extra,
    }
    response = client.post("/api/v1/nodes", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return fake


def admin_headers(app: FastAPI) -> dict[str, str]:
    with Session(app.state.services.engine) as session:
        _, secret = create_token(session, name="t", scope="admin")
    return auth(secret)


def token_of(client: TestClient, n: int) -> str:
    script = client.get("/boot/ipxe", params={"mac": f"52:54:00:00:98:{n:02x}"}).text
    found = re.search(r"/boot/answers/([A-Za-z0-9_-]+)", script)
    assert found, script
    return found.group(1)


def ticks(client: TestClient, count: int) -> None:
    for _ in range(count):
        tick(client)


def test_racking_flow_to_active(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet, compute: None
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1, role="compute")
    tick(client)  # inspection -> ready
    tick(client)  # racking flow: provision with the role's default image
    assert node(client, operator, "n1")["state"] == "provisioning"
    assert node(client, operator, "n1")["image"] == "rocky-9"
    ticks(client, 3)  # network, power, install (waits)
    assert fake.boots == [BootDevice.NETWORK]
    assert fake.power == "on"
    ticks(client, 2)
    assert node(client, operator, "n1")["state"] == "provisioning"  # waiting, not polling

    token = token_of(client, 1)
    assert client.post(f"/callback/{token}/started").status_code == 200
    assert client.post(f"/callback/{token}/done").status_code == 200
    ticks(client, 3)  # install (done), disk, reboot -> provisioned
    assert node(client, operator, "n1")["state"] == "provisioned"
    assert fake.boots == [BootDevice.NETWORK, BootDevice.DISK]
    tick(client)  # hand-off: immediate for this role
    assert node(client, operator, "n1")["state"] == "active"
    timeline = kinds(client, operator, "n1")
    assert timeline.index("deployed") < timeline.index("handed-off")
    assert tick(client) == 0


def test_installer_deadline_fails_the_node_and_says_where(
    tmp_path: Path, database_url: str, fleet: FakeFleet
) -> None:
    app = make_app(tmp_path, database_url, fleet, deploy_timeout=0.5)
    with TestClient(app) as client:
        headers = admin_headers(app)
        client.post("/api/v1/roles", json={"name": "compute"}, headers=headers)
        enroll(client, headers, fleet, "n1", 1)
        tick(client)
        response = client.post(
            "/api/v1/nodes/n1/actions/provision",
            json={"role": "compute", "image": "rocky-9"},
            headers=headers,
        )
        assert response.status_code == 202
        ticks(client, 3)
        time.sleep(0.6)
        tick(client)
        failed = node(client, headers, "n1")
        assert failed["state"] == "failed"
        assert failed["last_error"].startswith("install: no installer callback within")
        # The machine is told to boot from disk now, not to install again.
        script = client.get("/boot/ipxe", params={"mac": "52:54:00:00:98:01"}).text
        assert "sanboot" in script


def test_installer_failure_and_retry(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet, compute: None
) -> None:
    enroll(client, operator, fleet, "n1", 1, role="compute")
    ticks(client, 5)  # ready, provision, network, power, install
    token = token_of(client, 1)
    client.post(f"/callback/{token}/started")
    client.post(f"/callback/{token}/failed", json={"message": "no disk matched the profile"})
    tick(client)
    failed = node(client, operator, "n1")
    assert failed["state"] == "failed"
    assert failed["last_error"] == (
        "install: the installer reported failure: no disk matched the profile"
    )
    retry = client.post("/api/v1/nodes/n1/actions/retry", headers=operator)
    assert retry.status_code == 202
    assert retry.json()["state"] == "provisioning"
    ticks(client, 3)
    new_token = token_of(client, 1)
    assert new_token != token
    assert client.post(f"/callback/{token}/done").status_code == 410


def test_bmc_error_fails_at_its_step(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet, compute: None
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1, role="compute")
    ticks(client, 3)  # ready, provision, network
    fake.fail("set_power", BmcError(ErrorKind.UNREACHABLE, "no answer from 192.0.2.1"))
    tick(client)
    failed = node(client, operator, "n1")
    assert failed["state"] == "failed"
    assert failed["last_error"].startswith("powering: power cycle failed")


def test_release_wipes_then_ready(
    client: TestClient, app: FastAPI, operator: dict[str, str], fleet: FakeFleet, compute: None
) -> None:
    app.state.services.settings.wipe_kernel_url = "https://images.example/wipe/vmlinuz"
    app.state.services.settings.wipe_initrd_url = "https://images.example/wipe/initrd"
    fake = enroll(client, operator, fleet, "n1", 1)
    tick(client)
    assert client.post("/api/v1/nodes/n1/actions/release", headers=operator).status_code == 202
    ticks(client, 3)  # network, power, install (waits for the wipe image)
    script = client.get("/boot/ipxe", params={"mac": "52:54:00:00:98:01"}).text
    callback = re.search(r"provisioner\.callback=(\S+)", script)
    assert callback, script
    assert client.post(f"{callback.group(1)}/done").status_code == 200
    ticks(client, 2)  # install (done), off -> ready
    assert node(client, operator, "n1")["state"] == "ready"
    assert fake.power == "off"


def test_per_rack_limit_holds_the_second_node(
    tmp_path: Path, database_url: str, fleet: FakeFleet
) -> None:
    app = make_app(tmp_path, database_url, fleet, max_deploying_per_rack=1)
    with TestClient(app) as client:
        headers = admin_headers(app)
        client.post(
            "/api/v1/roles", json={"name": "compute", "default_image": "rocky-9"}, headers=headers
        )
        fakes = {n: enroll(client, headers, fleet, f"n{n}", n, role="compute") for n in (1, 2)}
        ticks(client, 6)
        # One installation in flight in the rack: whichever node got there first.
        powered = [n for n, fake in fakes.items() if fake.power == "on"]
        assert len(powered) == 1
        (waiting,) = set(fakes) - set(powered)
        client.post(f"/callback/{token_of(client, powered[0])}/done")
        # The first leaves the install step; the other looks again within a second.
        deadline = time.monotonic() + 10
        while fakes[waiting].power != "on":
            assert time.monotonic() < deadline, "the second node was never powered on"
            tick(client)
            time.sleep(0.1)


def test_bulk_action_lists_refusals(
    client: TestClient, app: FastAPI, operator: dict[str, str], fleet: FakeFleet, compute: None
) -> None:
    for n in (1, 2, 3):
        enroll(client, operator, fleet, f"n{n}", n)
    with app.state.services.engine.begin() as connection:
        connection.execute(
            update(table_of(Node)).where(table_of(Node).c.name != "n3").values(state="ready")
        )
    response = client.post(
        "/api/v1/actions",
        json={
            "action": "provision",
            "selection": {"rack": "r01"},
            "role": "compute",
            "max_in_flight": 1,
        },
        headers=operator,
    )
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["accepted"] == ["n1", "n2"]
    assert [r["name"] for r in result["refused"]] == ["n3"]
    assert "allowed now" in result["refused"][0]["reason"]
    with app.state.services.engine.connect() as connection:
        batches = connection.execute(table_of(Deployment).select()).all()
    assert {(str(d.batch_id), d.batch_limit) for d in batches} == {(result["batch_id"], 1)}
    everything = client.post(
        "/api/v1/actions", json={"action": "provision", "selection": {}}, headers=operator
    )
    assert everything.status_code == 422
    unknown = client.post(
        "/api/v1/actions",
        json={"action": "reimage", "selection": {"names": ["n1", "nope"]}},
        headers=operator,
    )
    assert unknown.status_code == 404
