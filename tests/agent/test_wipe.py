"""Released nodes wiped by the deploy agent, when no wipe image is configured: the
command it is given, the evidence it reports kept per disk, and a disk it could not wipe
failing the node. Through the real app, actions and reconciler (tests/agent/machine.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.agent import build
from provisioner.bmc.fake import FakeFleet
from tests import flows
from tests.agent import machine
from tests.agent.machine import address_of, disk, inventory, mac_of
from tests.test_reconciler import node, tick


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def app(
    tmp_path: Path,
    database_url: str,
    fleet: FakeFleet,
    agent: build.Agent,
) -> FastAPI:
    return machine.make_app(tmp_path, database_url, fleet, agent, inspect_on_enroll=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


TWO_DISKS = [disk("vda", 120), disk("vdb", 240)]


def wipe_result(vdb_ok: bool = True) -> dict[str, Any]:
    read_back = "read back 128 MiB: all zero"
    return {
        "command": "wipe",
        "ok": vdb_ok,
        "disks": [
            {
                "disk": "/dev/vda",
                "method": "metadata",
                "bytes": 134217728,
                "seconds": 8,
                "ok": True,
                "verified": read_back,
                "message": "",
            },
            {
                "disk": "/dev/vdb",
                "method": "metadata",
                "bytes": 134217728 if vdb_ok else 67108864,
                "seconds": 5.5,
                "ok": vdb_ok,
                "verified": read_back if vdb_ok else "",
                "message": "" if vdb_ok else "writing to /dev/vdb failed: Input/output error",
            },
        ],
    }


def test_release_is_wiped_by_the_agent_with_evidence_kept(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    found = inventory(1, TWO_DISKS)
    fake = machine.active(client, admin, fleet, "n1", 1, found)
    # No wipe image is configured, but the agent is built: it wipes.
    machine.act(client, admin, "n1", "release")
    assert node(client, admin, "n1")["state"] == "wiping"
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(found)
        assert own.heartbeat() == "wipe metadata /dev/vda /dev/vdb"
        assert re.fullmatch(r"wait \d+", own.heartbeat("wipe"))
        for what in ("image", "config-drive"):  # a wipe writes nothing
            assert own.http.get(f"/agent/{booted.token}/{what}").status_code == 404
        own.result(wipe_result())
        assert own.heartbeat() == "poweroff"
    flows.tick_until(client, admin, "n1", "ready")
    assert fake.power == "off"

    wipes = client.get("/api/v1/nodes/n1/wipes", headers=admin).json()
    assert sorted(
        (w["disk"], w["method"], w["bytes"], w["seconds"], w["ok"], w["verified"]) for w in wipes
    ) == [
        ("/dev/vda", "metadata", 134217728, 8.0, True, "read back 128 MiB: all zero"),
        ("/dev/vdb", "metadata", 134217728, 5.5, True, "read back 128 MiB: all zero"),
    ]
    assert len({w["deployment_id"] for w in wipes}) == 1
    wiped = machine.messages(client, admin, "n1", "wipe")
    assert len(wiped) == 2, wiped
    assert all(" wiped (metadata): 134,217,728 bytes in " in m for m in wiped), wiped
    # The service powered it off, and says so.
    assert node(client, admin, "n1")["power_state"] == "off"


def test_a_disk_that_was_not_wiped_fails_the_node_naming_it(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    found = inventory(2, TWO_DISKS)
    machine.active(client, admin, fleet, "n2", 2, found)
    machine.act(client, admin, "n2", "release")
    booted = machine.powered_and_booted(client, admin, "n2", mac_of(2), address_of(2))
    with machine.running(client, address_of(2), booted.token) as own:
        own.inventory(found)
        assert own.heartbeat() == "wipe metadata /dev/vda /dev/vdb"
        own.result(wipe_result(vdb_ok=False))
    flows.tick_until(client, admin, "n2", "failed")
    failed = node(client, admin, "n2")
    assert failed["failed_from"] == "wiping"
    assert failed["last_error"] == (
        "agent: the agent reported that its wipe failed: "
        "/dev/vdb: writing to /dev/vdb failed: Input/output error"
    )
    kept = client.get("/api/v1/nodes/n2/wipes", headers=admin).json()
    assert {(w["disk"], w["ok"]) for w in kept} == {("/dev/vda", True), ("/dev/vdb", False)}


def _releasing(client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path) -> str:
    """Node n3 active, released, and its agent booted and told to wipe; its token."""
    machine.catalog(client, admin, tmp_path)
    found = inventory(3, TWO_DISKS)
    machine.active(client, admin, fleet, "n3", 3, found)
    machine.act(client, admin, "n3", "release")
    booted = machine.powered_and_booted(client, admin, "n3", mac_of(3), address_of(3))
    with machine.running(client, address_of(3), booted.token) as own:
        own.inventory(found)
        assert own.heartbeat() == "wipe metadata /dev/vda /dev/vdb"
    return booted.token


def test_a_wipe_result_leaving_out_a_disk_it_was_told_to_wipe_is_no_wipe(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    """The service asked for both disks; a result that accounts for one of them cannot
    return the node to ready with the other's data on it."""
    token = _releasing(client, admin, fleet, tmp_path)
    partial = wipe_result()
    partial["disks"] = partial["disks"][:1]
    with machine.running(client, address_of(3), token) as own:
        own.post("result", partial)
    flows.tick_until(client, admin, "n3", "failed")
    assert node(client, admin, "n3")["last_error"].endswith(
        "the agent reported its wipe done, but left out /dev/vdb, which it was told to wipe"
    )


def test_a_deploy_result_does_not_end_a_wipe(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    """A result of the wrong kind is not the job's: no disk was wiped."""
    token = _releasing(client, admin, fleet, tmp_path)
    deployed = {"command": "deploy", "ok": True, "disk": "/dev/vda", "bytes": 1, "sha256": "0" * 64}
    with machine.running(client, address_of(3), token) as own:
        refused = own.post("result", deployed)
    for _ in range(3):
        tick(client)
    assert node(client, admin, "n3")["state"] == "wiping"
    assert client.get("/api/v1/nodes/n3/wipes", headers=admin).json() == []
    assert refused.status_code == 409, refused.text
    with machine.running(client, address_of(3), token) as own:
        assert own.heartbeat() == "wipe metadata /dev/vda /dev/vdb"  # the job is still to do
