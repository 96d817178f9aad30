"""The reconciler and the power sync against fake BMCs (provisioner.bmc.fake): actions
are carried out, inspections move nodes on, failures stay on their own node."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update
from sqlmodel import col

from provisioner.app import create_app
from provisioner.bmc.base import BootDevice, ErrorKind
from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.models import Event, Node, utcnow
from provisioner.power import PowerSync, SyncReport
from provisioner.settings import Settings
from tests.conftest import auth

PASSWORD = "fake-pw"


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def app(tmp_path: Path, database_url: str, fleet: FakeFleet) -> FastAPI:
    # The loops stay off: each test drives the reconciler one tick at a time.
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_sync_failure_limit=3,
    )
    return create_app(settings, driver_factory=fleet.driver)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def enroll(
    client: TestClient, headers: dict[str, str], fleet: FakeFleet, name: str, n: int, **bmc: Any
) -> FakeBmc:
    address = f"192.0.2.{n}"
    fake = fleet.add(address, users={"admin": PASSWORD}, **bmc)
    body = {
        "name": name,
        "bmc": {"address": address, "username": "admin", "password": PASSWORD},
        "nics": [{"mac": f"52:54:00:00:99:{n:02x}"}],
    }
    response = client.post("/api/v1/nodes", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return fake


def tick(client: TestClient) -> int:
    reconciler = client.app.state.services.reconciler  # type: ignore[attr-defined]
    claimed: int = client.portal.call(reconciler.tick)  # type: ignore[union-attr]
    client.portal.call(reconciler.drain)  # type: ignore[union-attr]
    return claimed


def sync(client: TestClient) -> SyncReport:
    power_sync: PowerSync = client.app.state.services.power_sync  # type: ignore[attr-defined]
    assert client.portal is not None
    return client.portal.call(power_sync.sync_once)


def node(client: TestClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    data: dict[str, Any] = client.get(f"/api/v1/nodes/{name}", headers=headers).json()
    return data


def kinds(client: TestClient, headers: dict[str, str], name: str) -> list[str]:
    events = client.get(f"/api/v1/nodes/{name}/events", headers=headers).json()
    return [e["kind"] for e in events]


def test_enrollment_leads_to_inspection_and_ready(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1, power="on")
    assert node(client, operator, "n1")["state"] == "enrolled"
    assert tick(client) == 1
    after = node(client, operator, "n1")
    assert after["state"] == "ready"
    assert after["power_state"] == "on"
    assert after["hardware_profile"] == "generic"
    assert kinds(client, operator, "n1") == ["enroll", "inspect", "inspected"]
    inventory = client.get("/api/v1/nodes/n1/inventory", headers=operator).json()
    assert inventory["facts"]["serial"] == fake.facts["serial"]
    assert inventory["hardware_profile"] == "generic"
    assert tick(client) == 0  # nothing more to do


def test_a_node_being_written_to_is_still_claimed(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet, database_url: str
) -> None:
    """On PostgreSQL the claim skips locked rows; inserting an event (as the boot trace
    does all the time) locks the node row for its foreign key and must not count."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no row locks: a writer locks the whole database")
    enroll(client, operator, fleet, "n1", 1)
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with engine.connect() as other:
        node_id = other.execute(select(col(Node.id))).scalar_one()
        other.execute(
            insert(Event).values(node_id=node_id, time=utcnow(), actor="node", kind="boot-ipxe")
        )  # not committed yet: the row lock is held
        assert tick(client) == 1
        other.rollback()
    assert node(client, operator, "n1")["state"] == "ready"


def test_failed_inspection_says_why_and_retry_recovers(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1)
    fake.users["admin"] = "changed-on-the-bmc"
    tick(client)
    failed = node(client, operator, "n1")
    assert failed["state"] == "failed"
    assert failed["failed_from"] == "inspecting"
    assert "inspection failed" in failed["last_error"]
    assert "credentials" in failed["last_error"]
    assert PASSWORD not in str(failed)

    fake.users["admin"] = PASSWORD
    client.post("/api/v1/nodes/n1/actions/retry", headers=operator)
    tick(client)
    assert node(client, operator, "n1")["state"] == "ready"


def test_power_actions_reach_the_bmc(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1)
    tick(client)  # inspection
    accepted = client.post("/api/v1/nodes/n1/actions/power-on", headers=operator)
    assert accepted.status_code == 202
    assert accepted.json()["target_power"] == "on"
    tick(client)
    assert fake.power == "on"
    after = node(client, operator, "n1")
    assert (after["power_state"], after["target_power"]) == ("on", None)

    client.post("/api/v1/nodes/n1/actions/power-off", headers=operator)
    tick(client)
    assert fake.power == "off"
    # Cycling a machine that is off powers it on rather than failing.
    client.post("/api/v1/nodes/n1/actions/power-cycle", headers=operator)
    tick(client)
    assert fake.power == "on"
    assert node(client, operator, "n1")["power_state"] == "on"
    assert kinds(client, operator, "n1")[-6:] == [
        "power-on",
        "power",
        "power-off",
        "power",
        "power-cycle",
        "power",
    ]


def test_a_failed_power_action_is_reported_not_retried_forever(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1)
    tick(client)
    fake.fail("set_power", ErrorKind.UNSUPPORTED)
    client.post("/api/v1/nodes/n1/actions/power-on", headers=operator)
    tick(client)
    after = node(client, operator, "n1")
    assert after["target_power"] is None
    assert after["power_state"] == "unknown"
    assert "power on failed" in after["power_reason"]
    assert kinds(client, operator, "n1")[-1] == "power-failed"
    assert tick(client) == 0


def test_power_sync_isolates_a_silent_bmc_and_flags_it(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    healthy = [enroll(client, operator, fleet, f"ok{i}", i, power="on") for i in range(1, 4)]
    silent = enroll(client, operator, fleet, "silent", 9, power="on")
    tick(client)
    for fake in healthy:
        fake.power = "off"
    silent.fail("power_state", ErrorKind.UNREACHABLE, times=100)

    report = sync(client)
    assert (report.polled, report.changed, report.failed) == (4, 3, 1)
    assert all(node(client, operator, f"ok{i}")["power_state"] == "off" for i in range(1, 4))
    down = node(client, operator, "silent")
    assert down["power_state"] == "unknown"
    assert "Injected unreachable" in down["power_reason"]

    sync(client)
    report = sync(client)  # the third failure in a row reaches the limit
    assert report.flagged == ["silent"]
    flagged = node(client, operator, "silent")
    assert flagged["power_state"] == "error"
    assert "no longer polled after 3 failures" in flagged["power_reason"]
    assert sync(client).polled == 3  # the flagged node is left alone
    assert kinds(client, operator, "silent").count("power-sync-failed") == 1

    # An operator acting on the node gives it a fresh start.
    silent._errors.clear()
    client.post("/api/v1/nodes/silent/actions/power-on", headers=operator)
    tick(client)
    assert sync(client).polled == 4
    assert node(client, operator, "silent")["power_state"] == "on"


def test_leases_keep_replicas_apart_and_expire(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet, app: FastAPI
) -> None:
    enroll(client, operator, fleet, "n1", 1)
    with app.state.services.engine.begin() as connection:
        connection.execute(
            update(Node).values(
                lease_owner="other-replica", lease_expires_at=utcnow() + timedelta(minutes=5)
            )
        )
    assert tick(client) == 0
    with app.state.services.engine.begin() as connection:
        # The other replica died: its lease ran out.
        connection.execute(update(Node).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert tick(client) == 1
    assert node(client, operator, "n1")["state"] == "ready"
    with app.state.services.engine.connect() as connection:
        lease = connection.execute(
            Node.__table__.select().with_only_columns(col(Node.lease_owner))  # type: ignore[attr-defined]
        ).scalar_one()
    assert lease is None


def test_maintenance_holds_inspection_back(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    enroll(client, operator, fleet, "n1", 1)
    client.post("/api/v1/nodes/n1/actions/maintenance-on", headers=operator)
    assert tick(client) == 0
    client.post("/api/v1/nodes/n1/actions/maintenance-off", headers=operator)
    assert tick(client) == 1
    assert node(client, operator, "n1")["state"] == "ready"


def test_boot_device_and_live_power(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1, power="on")
    tick(client)
    set_pxe = client.put(
        "/api/v1/nodes/n1/boot-device", json={"device": "network"}, headers=operator
    )
    assert set_pxe.status_code == 200, set_pxe.text
    # The generic profile boots UEFI, so that is the default here.
    assert set_pxe.json() == {"device": "network", "persistent": False, "uefi": True}
    assert fake.boot.device is BootDevice.NETWORK
    persistent = client.put(
        "/api/v1/nodes/n1/boot-device",
        json={"device": "disk", "persistent": True, "uefi": False},
        headers=operator,
    )
    assert persistent.json() == {"device": "disk", "persistent": True, "uefi": False}
    assert client.get("/api/v1/nodes/n1/boot-device", headers=viewer).json() == persistent.json()
    assert client.get("/api/v1/nodes/n1/power", headers=viewer).json() == {"power_state": "on"}
    assert kinds(client, operator, "n1")[-1] == "boot-device"
    assert (
        client.put(
            "/api/v1/nodes/n1/boot-device", json={"device": "cdrom"}, headers=operator
        ).status_code
        == 422
    )
    assert (
        client.put(
            "/api/v1/nodes/n1/boot-device", json={"device": "disk"}, headers=viewer
        ).status_code
        == 403
    )


def test_bmc_errors_are_problems_with_their_kind(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    fake = enroll(client, operator, fleet, "n1", 1)
    tick(client)
    fake.fail("power_state", ErrorKind.UNREACHABLE, times=10)
    response = client.get("/api/v1/nodes/n1/power", headers=operator)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["bmc_error"] == "unreachable"
    assert client.get("/api/v1/nodes/n1/inventory", headers=auth("nope")).status_code == 401


def test_boot_device_is_refused_while_a_step_owns_the_node(
    client: TestClient, operator: dict[str, str], fleet: FakeFleet
) -> None:
    enroll(client, operator, fleet, "n1", 1)
    client.post("/api/v1/nodes/n1/actions/inspect", headers=operator)
    response = client.put("/api/v1/nodes/n1/boot-device", json={"device": "disk"}, headers=operator)
    assert response.status_code == 409
    missing = client.get("/api/v1/nodes/n1/inventory", headers=operator)
    assert missing.status_code == 409
    assert "not been inspected" in missing.json()["detail"]
