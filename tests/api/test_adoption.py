"""A machine that network-booted before it was enrolled is a ``discovered`` node; a rack
import or an enrollment naming its MAC adopts that node (same id, timeline and boot
address kept) instead of conflicting, and a discovered node given a BMC is enrolled.
Every node here starts as a real unknown boot and goes on through the reconciler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.bmc.fake import FakeFleet
from provisioner.settings import Settings
from tests.conftest import node_body, snapshot
from tests.flows import machine, services, tick_until
from tests.test_reconciler import kinds, node

MAC = "52:54:00:ad:00:01"
OTHER_MAC = "52:54:00:ad:00:02"
BOOT_ADDRESS = "10.20.0.5"
CSV_HEADER = "name,rack,u,bmc_address,bmc_username,bmc_password,macs\n"
# Two nodes of rack r01, one on each MAC.
TWO_ROWS = (
    f"r01-u01,r01,1,192.0.2.41,admin,fake-pw,{MAC}\n"
    f"r01-u02,r01,2,192.0.2.42,admin,fake-pw,{OTHER_MAC}\n"
)
BMC = {"address": "192.0.2.40", "username": "admin", "password": "fake-pw"}


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> FastAPI:
    # Any BMC address a request names answers, with the credentials it was given.
    fleet = FakeFleet(adopt_unknown=True)
    # The loops stay off: each test drives the reconciler one tick at a time.
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, reconciler=False)
    return create_app(settings, driver_factory=fleet.driver)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def flush_hops(client: TestClient) -> None:
    """Write the boot trace now: it is written in batches, after the responses."""
    client.portal.call(services(client.app).boot.hops.flush)  # type: ignore[union-attr]


def boot_unknown(
    client: TestClient, headers: dict[str, str], mac: str, address: str = BOOT_ADDRESS
) -> dict[str, Any]:
    """Be a machine nobody enrolled: network-boot from ``address``; returns the node the
    service discovered, as the API shows it."""
    with machine(client, address) as own:
        assert own.get("/boot/ipxe", params={"mac": mac}).status_code == 200
    flush_hops(client)
    found = client.get("/api/v1/nodes", params={"mac": mac}, headers=headers).json()["items"]
    assert [n["state"] for n in found] == ["discovered"]
    discovered: dict[str, Any] = found[0]
    return discovered


def import_csv(client: TestClient, headers: dict[str, str], rows: str) -> tuple[int, Any]:
    """Import a CSV manifest of ``rows``; the status and the body of the answer."""
    response = client.post(
        "/api/v1/racks/import",
        content=(CSV_HEADER + rows).encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )
    return response.status_code, response.json()


def events(client: TestClient, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/api/v1/nodes/{name}/events", headers=headers).json()
    return found


def names(client: TestClient, headers: dict[str, str]) -> list[str]:
    items = client.get("/api/v1/nodes", headers=headers).json()["items"]
    return [n["name"] for n in items]


def adoption_event(client: TestClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    (event,) = [e for e in events(client, headers, name) if e["kind"] == "enroll"]
    return event


def tftp_hop_lands_on(client: TestClient, headers: dict[str, str], name: str) -> bool:
    """Whether a TFTP transfer to the machine's boot address is put on node ``name``'s
    timeline: the service still knows which node boots from that address."""
    transfer = {
        "client": BOOT_ADDRESS,
        "file": "undionly.kpxe",
        "bytes": 70000,
        "duration": 0.1,
        "result": "ok",
    }
    response = client.post("/boot/trace/tftp", json={"transfers": [transfer]}, headers=headers)
    assert response.status_code == 202, response.text
    flush_hops(client)
    return any(e["kind"] == "boot-tftp" for e in events(client, headers, name))


def test_a_rack_import_adopts_a_discovered_node(
    client: TestClient, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    before = events(client, operator, discovered["name"])
    assert [e["kind"] for e in before] == ["discovered", "boot-ipxe"]
    # The manifest writes the MAC its own way, and enrolls a machine never seen as well.
    rows = TWO_ROWS.replace(MAC, MAC.upper().replace(":", "-"))
    status, result = import_csv(client, operator, rows)
    assert status == 201, result
    assert (result["created"], result["adopted"]) == (1, 1)
    adopted, created = result["nodes"]
    assert adopted["id"] == discovered["id"]
    assert (adopted["name"], adopted["rack"], adopted["rack_unit"]) == ("r01-u01", "r01", 1)
    assert adopted["state"] == "enrolled"
    assert adopted["bmc"]["address"] == "192.0.2.41"
    assert adopted["nics"] == [{"mac": MAC, "pxe": True}]
    assert created["id"] != discovered["id"]
    assert names(client, operator) == ["r01-u01", "r01-u02"]
    # Its timeline goes on from the discovery, and says who adopted it.
    after = events(client, operator, "r01-u01")
    assert after[: len(before)] == before
    event = adoption_event(client, operator, "r01-u01")
    assert (event["from_state"], event["to_state"]) == ("discovered", "enrolled")
    assert event["actor"] == "test-operator"
    assert event["message"] == (
        f"adopted discovered node {discovered['name']}: imported from a rack manifest"
    )
    assert tftp_hop_lands_on(client, operator, "r01-u01")
    # From here it is a node like any other: the reconciler inspects it.
    tick_until(client, operator, "r01-u01", "ready")
    assert kinds(client, operator, "r01-u01")[-2:] == ["inspect", "inspected"]
    inventory = client.get("/api/v1/nodes/r01-u01/inventory", headers=operator)
    assert inventory.status_code == 200, inventory.text


def test_an_enrollment_adopts_a_discovered_node(
    client: TestClient, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    response = client.post("/api/v1/nodes", json=node_body("r01-u01", MAC), headers=operator)
    assert response.status_code == 201, response.text
    enrolled = response.json()
    assert enrolled["id"] == discovered["id"]
    assert response.headers["Location"] == f"/api/v1/nodes/{discovered['id']}"
    assert (enrolled["name"], enrolled["state"]) == ("r01-u01", "enrolled")
    assert names(client, operator) == ["r01-u01"]
    kinds_now = [e["kind"] for e in events(client, operator, "r01-u01")]
    assert kinds_now == ["discovered", "boot-ipxe", "enroll"]
    event = adoption_event(client, operator, "r01-u01")
    assert (
        event["message"]
        == f"adopted discovered node {discovered['name']}: enrolled through the API"
    )
    assert tftp_hop_lands_on(client, operator, "r01-u01")
    tick_until(client, operator, "r01-u01", "ready")


def test_a_mac_of_a_node_that_is_not_discovered_still_conflicts(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    taken = node_body("r02-u01", OTHER_MAC)
    assert client.post("/api/v1/nodes", json=taken, headers=operator).status_code == 201
    before = snapshot(app)
    status, problem = import_csv(client, operator, TWO_ROWS)
    assert status == 409, problem
    assert problem["errors"] == [
        {"row": 2, "field": "macs", "message": f"MAC {OTHER_MAC} belongs to node 'r02-u01'"}
    ]
    # All or nothing: the discovered node was not adopted either.
    assert snapshot(app) == before
    assert node(client, operator, discovered["name"])["state"] == "discovered"


def test_one_node_cannot_adopt_two_discovered_nodes(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    first = boot_unknown(client, operator, MAC)
    second = boot_unknown(client, operator, OTHER_MAC, "10.20.0.6")
    before = snapshot(app)
    body = node_body("r01-u01", MAC)
    body["nics"] = [{"mac": MAC, "pxe": True}, {"mac": OTHER_MAC}]
    response = client.post("/api/v1/nodes", json=body, headers=operator)
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["detail"].startswith("A node adopts at most one discovered node")
    (error,) = problem["errors"]
    assert error["field"] == "nics"
    assert f"'{first['name']}', '{second['name']}'" in error["message"]
    assert "DELETE /api/v1/nodes/NAME" in error["message"]
    assert snapshot(app) == before


def test_two_rows_cannot_adopt_one_discovered_node(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    # The machine has a second NIC, recorded on the discovered node.
    nics = {"nics": [{"mac": MAC, "pxe": True}, {"mac": OTHER_MAC}]}
    patched = client.patch(f"/api/v1/nodes/{discovered['name']}", json=nics, headers=operator)
    assert patched.status_code == 200, patched.text
    before = snapshot(app)
    status, problem = import_csv(client, operator, TWO_ROWS)
    assert status == 409, problem
    assert problem["errors"] == [
        {
            "row": 2,
            "field": "macs",
            "message": f"discovered node {discovered['name']!r} is already adopted by row 1",
        }
    ]
    assert snapshot(app) == before


def test_a_discovered_node_given_a_bmc_is_enrolled_and_inspected(
    client: TestClient, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    name = discovered["name"]
    refused = client.post(f"/api/v1/nodes/{name}/actions/inspect", headers=operator)
    assert refused.status_code == 409
    assert f"give it a BMC with PATCH /api/v1/nodes/{name}" in refused.json()["detail"]
    assert refused.json()["allowed_actions"] == ["maintenance-on"]
    patch = {"name": "r01-u01", "rack": "r01", "bmc": BMC}
    response = client.patch(
        f"/api/v1/nodes/{name}",
        json=patch,
        headers={**operator, "If-Match": f'"{discovered["version"]}"'},
    )
    assert response.status_code == 200, response.text
    enrolled = response.json()
    assert (enrolled["id"], enrolled["name"], enrolled["state"]) == (
        discovered["id"],
        "r01-u01",
        "enrolled",
    )
    assert enrolled["version"] == discovered["version"] + 1
    event = adoption_event(client, operator, "r01-u01")
    assert (event["from_state"], event["to_state"], event["actor"]) == (
        "discovered",
        "enrolled",
        "test-operator",
    )
    assert event["message"] == "enrolled with a BMC: changed bmc, name, rack"
    tick_until(client, operator, "r01-u01", "ready")
    assert kinds(client, operator, "r01-u01") == [
        "discovered",
        "boot-ipxe",
        "enroll",
        "inspect",
        "inspected",
    ]
    inventory = client.get("/api/v1/nodes/r01-u01/inventory", headers=operator).json()
    assert inventory["hardware_profile"] == "generic"


def test_a_change_without_a_bmc_leaves_a_discovered_node_discovered(
    client: TestClient, operator: dict[str, str]
) -> None:
    discovered = boot_unknown(client, operator, MAC)
    response = client.patch(
        f"/api/v1/nodes/{discovered['name']}", json={"rack": "r01"}, headers=operator
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "discovered"
