"""Redfish BMC certificates through the API, against lab Redfish BMCs over HTTPS: the
first contact pins the certificate (recorded on the row and the timeline by the
drivers' on_pin), a changed certificate is refused with 502 certificate-refused until an
operator accepts it, and accepting reads what the BMC presents now."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from lab import faults
from provisioner.bmc.base import Target
from provisioner.models import Bmc
from provisioner.nodes.certificates import pin_recorder
from tests.lab_bmcs import PASSWORD, USER, LabBmcs, lab_bmcs


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBmcs]:
    with lab_bmcs() as bmcs:
        yield bmcs


def _enroll(client: TestClient, operator: dict[str, str], name: str, bmc: dict[str, Any]) -> None:
    body = {
        "name": name,
        "bmc": {"address": "127.0.0.1", "username": USER, "password": PASSWORD, **bmc},
    }
    answer = client.post("/api/v1/nodes", json=body, headers=operator)
    assert answer.status_code == 201, answer.text
    assert PASSWORD not in answer.text


def _messages(client: TestClient, name: str, viewer: dict[str, str]) -> list[str]:
    events = client.get(f"/api/v1/nodes/{name}/events", headers=viewer)
    return [event["message"] for event in events.json()]


def _pin(client: TestClient, viewer: dict[str, str]) -> str | None:
    pin: str | None = client.get("/api/v1/nodes/rf-01", headers=viewer).json()["bmc"][
        "tls_fingerprint"
    ]
    return pin


def test_pin_on_first_contact_then_refuse_a_new_certificate_until_accepted(
    client: TestClient,
    operator: dict[str, str],
    viewer: dict[str, str],
    lab: LabBmcs,
) -> None:
    bmc = lab.add_redfish()
    _enroll(client, operator, "rf-01", {"driver": "redfish", "port": bmc.port})
    assert _pin(client, viewer) is None

    power = client.get("/api/v1/nodes/rf-01/power", headers=viewer)
    assert power.status_code == 200, power.text
    first = _pin(client, viewer)
    assert first is not None
    assert first.startswith("sha256:")
    assert len(first) == 71
    assert f"BMC certificate pinned on first contact: {first}" in _messages(client, "rf-01", viewer)

    bmc.gate.fault = faults.parse_fault("new-certificate")
    refused = client.get("/api/v1/nodes/rf-01/power", headers=viewer)
    assert refused.status_code == 502, refused.text
    assert refused.json()["bmc_error"] == "certificate-refused"
    assert "accept-certificate" in refused.json()["detail"]
    # The pin stays: a driver never replaces one.
    assert _pin(client, viewer) == first

    url = "/api/v1/nodes/rf-01/bmc/accept-certificate"
    assert client.post(url, headers=viewer).status_code == 403
    wrong = client.post(url, json={"fingerprint": first}, headers=operator)
    assert wrong.status_code == 409, wrong.text
    assert "nothing was accepted" in wrong.json()["detail"]

    accepted = client.post(url, headers=operator)
    assert accepted.status_code == 200, accepted.text
    new = accepted.json()["fingerprint"]
    assert accepted.json() == {"previous": first, "fingerprint": new}
    assert new != first
    assert client.get("/api/v1/nodes/rf-01/power", headers=viewer).status_code == 200
    node = client.get("/api/v1/nodes/rf-01", headers=viewer).json()
    assert node["bmc"]["tls_fingerprint"] == new
    assert f"BMC certificate accepted: {new} (was {first})" in _messages(client, "rf-01", viewer)

    # Naming the certificate it presents is accepted too (colons and capitals allowed).
    spelled = "SHA256:" + ":".join(new[7:][i : i + 2].upper() for i in range(0, 64, 2))
    again = client.post(url, json={"fingerprint": spelled}, headers=operator)
    assert again.status_code == 200, again.text
    assert again.json() == {"previous": new, "fingerprint": new}


def test_an_ipmi_bmc_has_no_certificate_to_accept(
    client: TestClient, operator: dict[str, str], lab: LabBmcs
) -> None:
    bmc = lab.add_ipmi()
    _enroll(client, operator, "ipmi-01", {"driver": "ipmi", "port": bmc.port})
    refused = client.post("/api/v1/nodes/ipmi-01/bmc/accept-certificate", headers=operator)
    assert refused.status_code == 409
    assert "IPMI has no certificate" in refused.json()["detail"]


def test_tls_verify_false_is_stored_shown_and_logged(
    client: TestClient,
    operator: dict[str, str],
    viewer: dict[str, str],
    lab: LabBmcs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bmc = lab.add_redfish()
    unchecked = {"driver": "redfish", "port": bmc.port, "tls_verify": False}
    _enroll(client, operator, "rf-unchecked", unchecked)
    shown = client.get("/api/v1/nodes/rf-unchecked", headers=viewer)
    assert shown.json()["bmc"]["tls_verify"] is False
    assert PASSWORD not in shown.text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("rf-unchecked" in m and f"127.0.0.1:{bmc.port}" in m for m in warnings)
    bmc.gate.fault = faults.parse_fault("new-certificate")
    assert client.get("/api/v1/nodes/rf-unchecked/power", headers=viewer).status_code == 200


def test_a_bmc_changed_to_redfish_moves_to_443_and_forgets_its_pin(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    bmc = lab.add_redfish()
    _enroll(client, operator, "rf-moved", {"driver": "redfish", "port": bmc.port})
    assert client.get("/api/v1/nodes/rf-moved/power", headers=viewer).status_code == 200
    assert client.get("/api/v1/nodes/rf-moved", headers=viewer).json()["bmc"]["tls_fingerprint"]

    moved = client.patch(
        "/api/v1/nodes/rf-moved", json={"bmc": {"address": "10.9.9.9"}}, headers=operator
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["bmc"]["tls_fingerprint"] is None

    _enroll(client, operator, "was-ipmi", {"address": "10.9.9.10"})
    as_ipmi = client.get("/api/v1/nodes/was-ipmi", headers=viewer).json()["bmc"]
    assert (as_ipmi["driver"], as_ipmi["port"]) == ("ipmi", 623)
    patch = {"bmc": {"driver": "redfish", "tls_verify": False}}
    changed = client.patch("/api/v1/nodes/was-ipmi", json=patch, headers=operator)
    assert changed.status_code == 200, changed.text
    shown = changed.json()["bmc"]
    assert (shown["driver"], shown["port"], shown["tls_verify"]) == ("redfish", 443, False)
    assert PASSWORD not in changed.text


def test_pins_met_at_once_are_each_recorded_once_before_their_calls_return(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], app: Any
) -> None:
    """Worker threads meeting many BMCs at once share commits; each one's pin is in the
    database when its call returns, with one timeline event, and never overwritten."""
    names = [f"rf-many-{i:02d}" for i in range(24)]
    for i, name in enumerate(names):
        _enroll(client, operator, name, {"driver": "redfish", "port": 20000 + i})
    record = pin_recorder(app.state.services.engine)
    seen: list[str | None] = [None] * len(names)

    def meet(i: int) -> None:
        target = Target("127.0.0.1", USER, PASSWORD, port=20000 + i, driver="redfish")
        record(target, f"sha256:{i:064x}")
        with Session(app.state.services.engine) as session:
            bmc = session.exec(select(Bmc).where(Bmc.port == 20000 + i)).one()
            seen[i] = bmc.tls_fingerprint

    threads = [threading.Thread(target=meet, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == [f"sha256:{i:064x}" for i in range(len(names))]
    record(Target("127.0.0.1", USER, PASSWORD, port=20000, driver="redfish"), "sha256:" + "f" * 64)
    for i, name in enumerate(names):
        bmc = client.get(f"/api/v1/nodes/{name}", headers=viewer).json()["bmc"]
        assert bmc["tls_fingerprint"] == f"sha256:{i:064x}"
        pinned = [m for m in _messages(client, name, viewer) if "pinned on first contact" in m]
        assert len(pinned) == 1, pinned
