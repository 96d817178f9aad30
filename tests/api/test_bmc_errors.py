"""What the API answers for the Redfish driver's own error kinds, against a lab Redfish
BMC: a BMC that stays busy is a 503 (retry later), as problem+json naming the kind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lab import faults
from lab.redfish.service import RETRY_AFTER_SECONDS
from tests.lab_bmcs import PASSWORD, USER, LabBmcs, lab_bmcs


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBmcs]:
    with lab_bmcs() as bmcs:
        yield bmcs


def test_a_bmc_that_stays_busy_is_a_503(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str], lab: LabBmcs
) -> None:
    bmc = lab.add_redfish()
    body = {
        "name": "rf-busy",
        "bmc": {
            "driver": "redfish",
            "address": "127.0.0.1",
            "port": bmc.port,
            "username": USER,
            "password": PASSWORD,
            # Shorter than the lab's Retry-After twice over: the call gives up busy.
            "timeout": 3,
            "retries": 0,
        },
    }
    assert client.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
    bmc.gate.fault = faults.parse_fault("busy")
    busy = client.get("/api/v1/nodes/rf-busy/power", headers=viewer)
    assert busy.status_code == 503, busy.text
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert busy.json()["bmc_error"] == "busy"
    # What the BMC asked of its clients, passed on to the API's.
    assert busy.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert "busy" in busy.json()["detail"]
    assert PASSWORD not in busy.text
    bmc.gate.fault = faults.NO_FAULT
    assert client.get("/api/v1/nodes/rf-busy/power", headers=viewer).status_code == 200
