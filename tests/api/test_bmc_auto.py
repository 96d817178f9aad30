"""``bmc driver auto`` through the API and rack manifests, against lab BMCs: Redfish is
found on a Redfish BMC and IPMI on an IPMI BMC, each recorded as the driver with the
port that answered and a timeline event; where neither answers, a 422 names both
attempts and nothing is stored."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.lab_bmcs import PASSWORD, USER, LabBmcs, free_port, lab_bmcs


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBmcs]:
    with lab_bmcs() as bmcs:
        yield bmcs


def _bmc(port: int) -> dict[str, object]:
    return {
        "driver": "auto",
        "address": "127.0.0.1",
        "port": port,
        "username": USER,
        "password": PASSWORD,
        "timeout": 1.5,
    }


def test_enrolling_with_auto_records_what_answered(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    redfish, ipmi = lab.add_redfish(), lab.add_ipmi()
    for name, port, driver in (("n-rf", redfish.port, "redfish"), ("n-ipmi", ipmi.port, "ipmi")):
        answer = client.post(
            "/api/v1/nodes", json={"name": name, "bmc": _bmc(port)}, headers=operator
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["bmc"]["driver"] == driver
        assert answer.json()["bmc"]["port"] == port
        assert PASSWORD not in answer.text
        events = client.get(f"/api/v1/nodes/{name}/events", headers=viewer).json()
        assert any(f"answered on port {port}; driver {driver}" in e["message"] for e in events)
    assert client.get("/api/v1/nodes/n-rf/power", headers=viewer).status_code == 200


def test_adopting_a_discovered_node_with_auto_records_what_answered(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    mac = "52:54:00:00:0a:01"
    client.get("/boot/ipxe", params={"mac": mac})  # it boots unknown: discovered
    redfish = lab.add_redfish()
    body = {"name": "n-adopted", "bmc": _bmc(redfish.port), "nics": [{"mac": mac}]}
    answer = client.post("/api/v1/nodes", json=body, headers=operator)
    assert answer.status_code == 201, answer.text
    assert answer.json()["bmc"]["driver"] == "redfish"
    events = client.get("/api/v1/nodes/n-adopted/events", headers=viewer).json()
    assert any(e["kind"] == "discovered" for e in events)  # the same node, adopted
    found = f"answered on port {redfish.port}; driver redfish"
    assert [e["kind"] for e in events if found in e["message"]] == ["update"]


def test_nothing_answering_is_a_422_naming_both_and_nothing_is_stored(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    silent = free_port(socket.SOCK_DGRAM)
    body = {"name": "n-silent", "bmc": _bmc(silent)}
    answer = client.post("/api/v1/nodes", json=body, headers=operator)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error["field"] == "bmc.driver"
    assert "Redfish at https://127.0.0.1" in error["message"]
    assert f"IPMI at 127.0.0.1 port {silent}" in error["message"]
    assert PASSWORD not in answer.text
    assert client.get("/api/v1/nodes/n-silent", headers=viewer).status_code == 404


def test_a_bmc_changed_to_auto_is_probed_with_the_stored_password(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    ipmi, redfish = lab.add_ipmi(), lab.add_redfish()
    bmc = {**_bmc(ipmi.port), "driver": "ipmi"}
    body = {"name": "n-swapped", "bmc": bmc}
    assert client.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
    # Its mainboard is replaced by one whose BMC speaks Redfish on another port.
    silent = free_port(socket.SOCK_DGRAM)
    refused = client.patch(
        "/api/v1/nodes/n-swapped",
        json={"bmc": {"driver": "auto", "port": silent}},
        headers=operator,
    )
    assert refused.status_code == 422, refused.text
    assert "nothing was changed" in refused.json()["detail"]
    assert f"IPMI at 127.0.0.1 port {silent}" in refused.json()["errors"][0]["message"]
    kept = client.get("/api/v1/nodes/n-swapped", headers=viewer).json()["bmc"]
    assert (kept["driver"], kept["port"]) == ("ipmi", ipmi.port)
    changed = client.patch(
        "/api/v1/nodes/n-swapped",
        json={"bmc": {"driver": "auto", "port": redfish.port}},
        headers=operator,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["bmc"]["driver"], changed.json()["bmc"]["port"]) == (
        "redfish",
        redfish.port,
    )
    assert PASSWORD not in changed.text
    events = client.get("/api/v1/nodes/n-swapped/events", headers=viewer).json()
    found = f"answered on port {redfish.port}; driver redfish"
    assert any(e["message"].startswith("changed bmc; ") and found in e["message"] for e in events)
    assert client.get("/api/v1/nodes/n-swapped/power", headers=viewer).status_code == 200


def test_auto_on_a_node_without_a_bmc_needs_its_credentials(
    client: TestClient, operator: dict[str, str]
) -> None:
    client.get("/boot/ipxe", params={"mac": "52:54:00:00:0a:02"})
    answer = client.patch(
        "/api/v1/nodes/discovered-525400000a02",
        json={"bmc": {"driver": "auto", "address": "127.0.0.1"}},
        headers=operator,
    )
    assert answer.status_code == 422, answer.text
    assert "needs the BMC's address, username and password" in answer.json()["detail"]


def test_a_mixed_manifest_is_probed_row_by_row_all_or_nothing(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    ports = [lab.add_redfish().port, lab.add_ipmi().port, lab.add_redfish().port]
    ports.append(lab.add_ipmi().port)
    rows = "".join(
        f"  - {{name: m-{i}, bmc_address: 127.0.0.1, bmc_port: '{port}', bmc_driver: auto}}\n"
        for i, port in enumerate(ports)
    )
    head = f"defaults: {{bmc_username: {USER}, bmc_password: {PASSWORD}}}\nnodes:\n"
    silent = free_port(socket.SOCK_DGRAM)
    bad = f"  - {{name: m-x, bmc_address: 127.0.0.1, bmc_port: '{silent}', bmc_driver: auto}}\n"
    yaml = {"Content-Type": "application/yaml"}

    refused = client.post(
        "/api/v1/racks/import", content=head + rows + bad, headers=operator | yaml
    )
    assert refused.status_code == 422, refused.text
    assert [(e["row"], e["field"]) for e in refused.json()["errors"]] == [(5, "bmc_driver")]
    assert client.get("/api/v1/nodes", headers=viewer).json()["items"] == []

    imported = client.post("/api/v1/racks/import", content=head + rows, headers=operator | yaml)
    assert imported.status_code == 201, imported.text
    drivers = [(n["bmc"]["driver"], n["bmc"]["port"]) for n in imported.json()["nodes"]]
    assert drivers == [
        ("redfish", ports[0]),
        ("ipmi", ports[1]),
        ("redfish", ports[2]),
        ("ipmi", ports[3]),
    ]
