"""A BMC (address and port) is one node's: enrollment, rack imports, changes and the
adoption of discovered nodes refuse another node's BMC with 409, naming the field and
the node that has it, and write nothing (issue 11)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.test_adoption import flush_hops
from tests.conftest import node_body, snapshot

CSV_HEADER = "name,rack,u,bmc_address,bmc_port,bmc_username,bmc_password,macs\n"


def _enroll(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/nodes", json=body, headers=headers)
    assert response.status_code == 201, response.text
    node: dict[str, Any] = response.json()
    return node


def _bmc(address: str, port: int | None = None) -> dict[str, Any]:
    bmc: dict[str, Any] = {"address": address, "username": "admin", "password": "pw"}
    return bmc if port is None else {**bmc, "port": port}


def _import(client: TestClient, headers: dict[str, str], rows: str) -> Any:
    return client.post(
        "/api/v1/racks/import",
        content=(CSV_HEADER + rows).encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )


def test_enrolling_another_nodes_bmc_is_409_naming_the_field_and_the_node(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    _enroll(client, operator, name="lab-1", bmc=_bmc("127.0.0.1", 6240))
    _enroll(client, operator, name="rack-1", bmc=_bmc("10.0.0.7"))
    before = snapshot(app)
    # Behind one address BMCs differ by port; on IPMI's own port, by address.
    same_port = client.post(
        "/api/v1/nodes", json={"name": "lab-2", "bmc": _bmc("127.0.0.1", 6240)}, headers=operator
    )
    same_address = client.post(
        "/api/v1/nodes", json={"name": "rack-2", "bmc": _bmc("10.0.0.7", 623)}, headers=operator
    )
    assert (same_port.status_code, same_address.status_code) == (409, 409)
    assert same_port.json()["errors"] == [
        {"field": "bmc.port", "message": "BMC 127.0.0.1 port 6240 belongs to node 'lab-1'"}
    ]
    assert same_address.json()["errors"] == [
        {"field": "bmc.address", "message": "BMC 10.0.0.7 port 623 belongs to node 'rack-1'"}
    ]
    assert "BMC" in same_port.json()["detail"]
    assert snapshot(app) == before
    # The same address on another port, or the same port at another address, is a
    # BMC of its own.
    _enroll(client, operator, name="lab-2", bmc=_bmc("127.0.0.1", 6241))
    _enroll(client, operator, name="rack-2", bmc=_bmc("10.0.0.8"))


def test_changing_a_bmc_to_another_nodes_is_409_and_changes_nothing(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    _enroll(client, operator, **node_body("n1", "52:54:00:00:b0:01"))
    _enroll(client, operator, **node_body("n2", "52:54:00:00:b0:02"))
    n1 = client.get("/api/v1/nodes/n1", headers=operator).json()["bmc"]
    client.patch("/api/v1/nodes/n2", json={"bmc": {"address": "127.0.0.2"}}, headers=operator)
    before = snapshot(app)
    port = client.patch(
        "/api/v1/nodes/n2",
        json={"bmc": {"address": "127.0.0.1", "port": n1["port"], "username": "x"}},
        headers=operator,
    )
    assert port.status_code == 409, port.text
    assert port.json()["errors"] == [
        {
            "field": "bmc.port",
            "message": f"BMC 127.0.0.1 port {n1['port']} belongs to node 'n1'",
        }
    ]
    client.patch("/api/v1/nodes/n2", json={"bmc": {"port": n1["port"]}}, headers=operator)
    before = snapshot(app)
    address = client.patch(
        "/api/v1/nodes/n2", json={"bmc": {"address": "127.0.0.1"}}, headers=operator
    )
    assert address.status_code == 409, address.text
    assert address.json()["errors"] == [
        {
            "field": "bmc.address",
            "message": f"BMC 127.0.0.1 port {n1['port']} belongs to node 'n1'",
        }
    ]
    assert snapshot(app) == before
    # A node keeps its own BMC through changes of anything else, the BMC's included.
    same = client.patch(
        "/api/v1/nodes/n1", json={"rack": "r02", "bmc": {"username": "root"}}, headers=operator
    )
    assert same.status_code == 200, same.text


def test_a_rack_import_refuses_a_bmc_in_use_or_listed_twice_by_row(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    _enroll(client, operator, name="old", bmc=_bmc("10.0.9.1"))
    before = snapshot(app)
    response = _import(
        client,
        operator,
        "a1,r9,1,10.0.9.1,,admin,pw,52:54:00:00:b1:01\n"
        "a2,r9,2,127.0.0.1,6250,admin,pw,52:54:00:00:b1:02\n"
        "a3,r9,3,127.0.0.1,6251,admin,pw,52:54:00:00:b1:03\n"
        "a4,r9,4,127.0.0.1,6250,admin,pw,52:54:00:00:b1:04\n"
        "a5,r9,5,10.0.9.2,,admin,pw,52:54:00:00:b1:05\n"
        "a6,r9,6,10.0.9.2,,admin,pw,52:54:00:00:b1:06\n",
    )
    assert response.status_code == 409, response.text
    assert response.json()["errors"] == [
        {
            "row": 1,
            "field": "bmc_address",
            "message": "BMC 10.0.9.1 port 623 belongs to node 'old'",
        },
        {
            "row": 4,
            "field": "bmc_port",
            "message": "BMC 127.0.0.1 port 6250 is already listed on row 2",
        },
        {
            "row": 6,
            "field": "bmc_address",
            "message": "BMC 10.0.9.2 port 623 is already listed on row 5",
        },
    ]
    assert snapshot(app) == before


def test_adopting_a_discovered_node_with_a_bmc_in_use_is_409_and_keeps_it_discovered(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    _enroll(client, operator, name="old", bmc=_bmc("10.0.9.1"))
    for mac in ("52:54:00:00:b2:01", "52:54:00:00:b2:02"):
        assert client.get("/boot/ipxe", params={"mac": mac}).status_code == 200
    flush_hops(client)  # the boot trace is written after the responses, in batches
    before = snapshot(app)
    enrolled = client.post(
        "/api/v1/nodes",
        json={"name": "r9-1", "bmc": _bmc("10.0.9.1"), "nics": [{"mac": "52:54:00:00:b2:01"}]},
        headers=operator,
    )
    imported = _import(client, operator, "r9-2,r9,2,10.0.9.1,,admin,pw,52:54:00:00:b2:02\n")
    patched = client.patch(
        "/api/v1/nodes/discovered-52540000b201", json={"bmc": _bmc("10.0.9.1")}, headers=operator
    )
    message = "BMC 10.0.9.1 port 623 belongs to node 'old'"
    assert enrolled.status_code == 409, enrolled.text
    assert enrolled.json()["errors"] == [{"field": "bmc.address", "message": message}]
    assert imported.status_code == 409, imported.text
    assert imported.json()["errors"] == [{"row": 1, "field": "bmc_address", "message": message}]
    assert patched.status_code == 409, patched.text
    assert patched.json()["errors"] == [{"field": "bmc.address", "message": message}]
    assert snapshot(app) == before
