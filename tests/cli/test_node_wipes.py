"""`provisioner node wipes` and the in-band half of `provisioner node inventory`, run as
the installed command against the service on a real port: a node inspected and deployed
by the deploy agent, released, and wiped by it (the test plays the machine's agent over
the real routes, the reconciler ticked as in tests/agent/test_wipe.py), so the evidence
and the inventory shown are the ones the service kept."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.agent import build
from provisioner.app import create_app
from provisioner.bmc.fake import FakeFleet
from provisioner.settings import Settings
from tests import flows
from tests.agent import machine
from tests.agent.machine import address_of, disk, inventory, mac_of
from tests.agent.test_wipe import wipe_result
from tests.handoff.conftest import BIN, Live, install

TWO_DISKS = [disk("vda", 120), disk("vdb", 240)]
READ_BACK = "read back 128 MiB: all zero"


@pytest.fixture
def app(tmp_path: Path, database_url: str, fleet: FakeFleet, agent: build.Agent) -> FastAPI:
    """The app with the deploy agent built and no wipe image: a release wipes with it."""
    return machine.make_app(tmp_path, database_url, fleet, agent, inspect_on_enroll=False)


def _provisioner(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_URL": live.url, "PROVISIONER_TOKEN": live.viewer}
    return subprocess.run(
        [str(BIN / "provisioner"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def _ok(live: Live, *args: str) -> str:
    result = _provisioner(live, *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def _rows(stdout: str) -> dict[str, list[str]]:
    """A table's rows, split into words, by their first word."""
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}


def _released_and_wiped(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, name: str, n: int, ok: bool
) -> dict[str, Any]:
    """Node ``name`` active, released, and wiped by its agent, which reports ``ok`` for
    /dev/vdb (always for /dev/vda); the inventory the agent posted."""
    found = inventory(n, TWO_DISKS)
    machine.active(client, admin, fleet, name, n, found)
    machine.act(client, admin, name, "release")
    booted = machine.powered_and_booted(client, admin, name, mac_of(n), address_of(n))
    with machine.running(client, address_of(n), booted.token) as agent:
        agent.inventory(found)
        assert agent.heartbeat() == "wipe metadata /dev/vda /dev/vdb"
        agent.result(wipe_result(vdb_ok=ok))
    flows.tick_until(client, admin, name, "ready" if ok else "failed")
    return found


def test_node_wipes_shows_each_disk_of_an_agent_wipe(
    live: Live, client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    _released_and_wiped(client, admin, fleet, "wp-n1", 1, ok=True)

    shown = _ok(live, "node", "wipes", "wp-n1")
    header, *_ = shown.splitlines()
    for column in ("TIME", "DISK", "METHOD", "BYTES", "DURATION", "RESULT", "VERIFIED"):
        assert column in header, header
    rows = {line.split()[2]: line for line in shown.splitlines() if "/dev/" in line}
    assert sorted(rows) == ["/dev/vda", "/dev/vdb"], shown
    deployment = machine.newest_deployment(client.app, "wp-n1")  # type: ignore[arg-type]
    for row, seconds in ((rows["/dev/vda"], "8.0 s"), (rows["/dev/vdb"], "5.5 s")):
        for what in ("metadata", "134,217,728", seconds, " ok ", READ_BACK):
            assert what in row, row
        assert str(deployment.id)[:8] in row, row

    # --json is the API's body, as it is.
    api = client.get("/api/v1/nodes/wp-n1/wipes", headers=admin).json()
    assert json.loads(_ok(live, "node", "wipes", "wp-n1", "--json")) == api
    assert {(w["disk"], w["ok"], w["verified"]) for w in api} == {
        ("/dev/vda", True, READ_BACK),
        ("/dev/vdb", True, READ_BACK),
    }


def test_a_failed_disk_is_shown_failed_with_its_message(
    live: Live, client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    _released_and_wiped(client, admin, fleet, "wp-n2", 2, ok=False)
    shown = _ok(live, "node", "wipes", "wp-n2")
    (vda,) = (line for line in shown.splitlines() if "/dev/vda" in line)
    (vdb,) = (line for line in shown.splitlines() if "/dev/vdb" in line)
    assert " ok " in vda, vda
    assert "FAILED" not in vda, vda
    for what in ("FAILED", "67,108,864", "writing to /dev/vdb failed: Input/output error"):
        assert what in vdb, vdb


def test_node_inventory_shows_what_the_agent_saw_from_the_inside(
    live: Live, client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    found = _released_and_wiped(client, admin, fleet, "wp-n3", 3, ok=True)

    shown = _ok(live, "node", "inventory", "wp-n3")
    assert "no in-band facts" not in shown
    lines = shown.splitlines()
    detail = {line.split("  ")[0]: line for line in lines if "  " in line}
    assert "Acme Compute AC-200, serial ACME-0003" in detail["System (DMI)"]
    assert found["system"]["uuid"] in detail["System UUID"]
    assert "Acme BIOS 2.14.1 (03/07/2025)" in detail["BIOS"]
    assert "16 x Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz" in detail["CPUs"]
    assert "64 GiB" in detail["Memory"]
    assert "bios" in detail["Boot mode"]
    assert "acme-ac200" in detail["Profile"]
    assert "agent" in detail["Read"]

    disks = lines.index("Disks, as the deploy agent saw them:")
    nics = lines.index("NICs, as the deploy agent saw them:")
    assert disks < nics
    disk_rows = _rows("\n".join(lines[disks + 1 : nics]))
    assert disk_rows["vda"][1:] == ["120", "GB", "QEMU", "HARDDISK", "SN-VDA", "no", "-"]
    assert disk_rows["vdb"][1:] == ["240", "GB", "QEMU", "HARDDISK", "SN-VDB", "no", "-"]
    nic_rows = _rows("\n".join(lines[nics + 1 :]))
    assert nic_rows["eth0"][1:] == [mac_of(3), "igb", "up", "yes"]
    assert nic_rows["eth1"][1:] == [mac_of(3, 1), "igb", "down", "no"]

    # --json stays the API's body, in-band facts and all.
    api = client.get("/api/v1/nodes/wp-n3/inventory", headers=admin).json()
    assert json.loads(_ok(live, "node", "inventory", "wp-n3", "--json")) == api
    assert api["facts"]["in_band"]["disks"] == found["disks"]


def test_a_node_never_wiped_says_so_and_an_unknown_one_is_an_error(
    live: Live, client: TestClient, admin: dict[str, str], fleet: FakeFleet
) -> None:
    machine.ready(client, admin, fleet, "wp-n4", 4)
    shown = _ok(live, "node", "wipes", "wp-n4")
    assert shown.splitlines() == [
        "no wipe evidence for wp-n4: it is recorded, per disk, when a release wipes the "
        "disks with the deploy agent (not with a wipe image, nor with --skip-wipe)"
    ]
    assert json.loads(_ok(live, "node", "wipes", "wp-n4", "--json")) == []

    for command in ("wipes", "inventory"):
        unknown = _provisioner(live, "node", command, "wp-nope")
        assert unknown.returncode == 1, unknown
        assert unknown.stdout == ""
        (line,) = unknown.stderr.splitlines()
        assert line.startswith("error: not found: "), line
        assert "wp-nope" in line, line


class TestWithoutTheAgent:
    """A service with no agent built: inspection reads the BMC only."""

    @pytest.fixture
    def app(self, settings: Settings, fleet: FakeFleet) -> FastAPI:
        return create_app(settings, driver_factory=fleet.driver)

    def test_node_inventory_says_there_are_no_in_band_facts(
        self, live: Live, client: TestClient, fleet: FakeFleet
    ) -> None:
        install(client, fleet, "wp-bmc1", None, rack="wp-r1", state="ready")
        shown = _ok(live, "node", "inventory", "wp-bmc1")
        assert "Fake Systems" in shown
        assert "Disks" not in shown
        assert "System (DMI)" not in shown
        assert shown.splitlines()[-1] == (
            "no in-band facts: the deploy agent has not reported from this node "
            "(inspection boots it when it is built: provisioner agent build)"
        )
