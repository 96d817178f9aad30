"""The service's side of the deploy agent, through the real app, the real API actions and
the reconciler, with fake BMCs: the test is the machine, speaking as init.sh does
(tests/agent/machine.py). Inspection from the inside, an image deploy and its reimage,
the ways a deployment by the agent fails, and what its answers never carry."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.agent import build
from provisioner.bmc.base import BootDevice
from provisioner.bmc.fake import FakeFleet
from tests import flows
from tests.agent import machine
from tests.agent.machine import BASE, IMAGE_BYTES, address_of, disk, inventory, mac_of
from tests.conftest import snapshot
from tests.test_reconciler import PASSWORD, node, tick


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def app(
    tmp_path: Path,
    database_url: str,
    fleet: FakeFleet,
    agent: build.Agent,
    overrides: dict[str, Any],
) -> FastAPI:
    # Inspections are asked for by the test, as an operator would.
    return machine.make_app(
        tmp_path, database_url, fleet, agent, inspect_on_enroll=False, **overrides
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


# --- 1. inspection ------------------------------------------------------------------


def test_inspection_boots_the_agent_and_keeps_what_it_saw(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, agent: build.Agent
) -> None:
    fake = machine.enroll(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "inspect")
    tick(client)
    assert "inventory" in fake.calls  # the BMC is read first
    assert node(client, admin, "n1")["state"] == "inspecting"

    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    assert fake.boots == [BootDevice.NETWORK]
    assert fake.boot.device is BootDevice.DEFAULT  # the network boot was one-time
    token, script = booted.token, booted.script
    kernel = re.search(r"^kernel --name kernel (\S+) (.*) \|\| goto failed$", script, re.M)
    initrd = re.search(r"^initrd --name initrd (\S+) ", script, re.M)
    assert kernel, script
    assert initrd, script
    assert kernel.group(1) == f"{BASE}/boot/agent/{agent.key}/vmlinuz?token={token}"
    assert initrd.group(1) == f"{BASE}/boot/agent/{agent.key}/initrd.img?token={token}"
    arguments = kernel.group(2).split()
    for argument in (
        f"provisioner.url={BASE}",
        f"provisioner.token={token}",
        "BOOTIF=01-" + mac_of(1).replace(":", "-"),
    ):
        assert argument in arguments, script

    with machine.running(client, address_of(1), token) as own:
        for url, built in ((kernel.group(1), agent.kernel), (initrd.group(1), agent.initrd)):
            fetched = own.http.get(url.removeprefix(BASE))
            assert fetched.status_code == 200
            assert fetched.content == built.read_bytes()
        # Booted but not yet reported: it waits, at the pace the service sets.
        assert re.fullmatch(r"wait [1-9][0-9]*", own.heartbeat())
        own.inventory(inventory(1))
        # Its inventory was the whole job: nothing is left for it.
        assert own.heartbeat() == "poweroff"

    flows.tick_until(client, admin, "n1", "ready")
    after = node(client, admin, "n1")
    assert after["hardware_profile"] == "acme-ac200"  # by the in-band DMI strings
    assert fake.power == "off"
    assert {(nic["mac"], nic["pxe"]) for nic in after["nics"]} == {
        (mac_of(1), True),
        (mac_of(1, 1), False),
    }
    agent_says = machine.messages(client, admin, "n1", "agent")
    assert any(
        m.startswith(f"agent inventory from {address_of(1)}: Acme Compute AC-200, serial ACME-0001")
        and m.endswith(f"NICs added: {mac_of(1, 1)}")
        for m in agent_says
    ), agent_says
    inspected = machine.messages(client, admin, "n1", "inspected")
    assert inspected == [
        f"inspected: Fake Systems FS-1000, serial {fake.facts['serial']}, 3 disk(s) and "
        "2 NIC(s) seen by the agent; profile acme-ac200"
    ]

    # Both inspections' facts, merged: the BMC's, and the agent's under in_band.
    shown = client.get("/api/v1/nodes/n1/inventory", headers=admin)
    assert shown.status_code == 200, shown.text
    assert shown.json()["hardware_profile"] == "acme-ac200"
    facts = shown.json()["facts"]
    assert facts["serial"] == fake.facts["serial"]
    assert facts["manufacturer"] == "Fake Systems"
    assert facts["in_band"]["system"]["serial"] == "ACME-0001"
    assert facts["in_band"]["disks"] == inventory(1)["disks"]
    # The service powered it off, and says so.
    assert after["power_state"] == "off"


# --- 2. image deploy ----------------------------------------------------------------


def test_an_image_is_written_by_the_agent_then_the_node_boots_it_and_goes_active(
    client: TestClient, app: FastAPI, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    image = machine.catalog(client, admin, tmp_path)
    fake = machine.ready(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "provision", role="compute")
    assert node(client, admin, "n1")["image"] == "acme-os"

    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    # The profile is known now: the agent's console is the one it names.
    assert "console=ttyS1,115200n8" in booted.script.split()
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(inventory(1))
        command = own.heartbeat()
        # The smallest disk of at least 100 GB: vda (16 GB) is too small, vdc larger.
        assert command == f"deploy /dev/vdb raw {IMAGE_BYTES} {image.sha256}"
        # Told again while it has not started (idle), not while it works.
        assert own.heartbeat() == command
        assert re.fullmatch(r"wait \d+", own.heartbeat("deploy"))
        assert own.image() == image.data
        drive = own.config_drive()
        meta = json.loads(drive["openstack/latest/meta_data.json"])
        assert meta["hostname"] == "n1"
        assert meta["meta"]["provisioner_callback"] == f"{BASE}/callback/{booted.token}/done"
        assert meta["meta"]["image"] == "acme-os"
        own.result(own.written(command))
        assert re.fullmatch(r"wait \d+", own.heartbeat())  # done: nothing more to do

    # Written: from now on the disk boots, and the machine is power-cycled into it.
    flows.tick_until(client, admin, "n1", lambda: fake.boots[-1] is BootDevice.DISK)
    assert fake.boots == [BootDevice.NETWORK, BootDevice.NETWORK, BootDevice.DISK]
    assert (fake.boot.device, fake.boot.persistent) == (BootDevice.DISK, True)
    assert machine.newest_deployment(app, "n1").step == "first-boot"
    for _ in range(3):  # it waits for the written system to call back
        tick(client)
    assert node(client, admin, "n1")["state"] == "provisioning"
    written = machine.messages(client, admin, "n1", "agent")
    assert any(
        m.startswith(f"image acme-os written to /dev/vdb and read back: {IMAGE_BYTES:,} bytes")
        for m in written
    ), written

    machine.first_boot(client, admin, "n1", 1, booted.token)
    with machine.running(client, address_of(1), booted.token) as own:
        assert own.heartbeat() == "poweroff"  # its deployment has ended

    # A reimage goes the same way, with a token of its own.
    machine.act(client, admin, "n1", "reimage")
    again, command = machine.deploy_by_agent(client, admin, "n1", 1, inventory(1))
    assert again.token != booted.token
    assert command == f"deploy /dev/vdb raw {IMAGE_BYTES} {image.sha256}"
    flows.tick_until(client, admin, "n1", lambda: fake.boots[-1] is BootDevice.DISK)
    machine.first_boot(client, admin, "n1", 1, again.token)
    assert fake.boots == [BootDevice.NETWORK, *[BootDevice.NETWORK, BootDevice.DISK] * 2]


# --- 3. failures --------------------------------------------------------------------


def test_a_failed_deploy_fails_the_node_with_the_agents_reason(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    fake = machine.ready(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "provision", role="compute")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    reason = f"checksum mismatch: read back {'0' * 64}, expected {'1' * 64}"
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(inventory(1))
        command = own.heartbeat()
        own.result(own.written(command) | {"ok": False, "sha256": "0" * 64, "message": reason})
        assert own.heartbeat() == "poweroff"
    flows.tick_until(client, admin, "n1", "failed")
    failed = node(client, admin, "n1")
    assert failed["failed_from"] == "provisioning"
    assert failed["last_error"] == f"agent: the agent reported that its deploy failed: {reason}"

    # A retry deploys again, with a token of its own, and gets the node to active.
    machine.act(client, admin, "n1", "retry")
    again, _ = machine.deploy_by_agent(client, admin, "n1", 1, inventory(1))
    assert again.token != booted.token
    flows.tick_until(client, admin, "n1", lambda: fake.boots[-1] is BootDevice.DISK)
    machine.first_boot(client, admin, "n1", 1, again.token)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({"disk": "/dev/vda"}, "it wrote /dev/vda, not /dev/vdb as it was told"),
        ({"sha256": "0" * 64}, f"with SHA-256 {'0' * 64}, not the image's"),
        ({"bytes": 1}, "it read back 1 bytes"),
    ],
)
def test_a_deploy_reported_done_but_not_as_told_fails_the_node(
    client: TestClient,
    admin: dict[str, str],
    fleet: FakeFleet,
    tmp_path: Path,
    change: dict[str, Any],
    found: str,
) -> None:
    """The agent's "ok" is checked against the disk and the image it was told to write."""
    machine.catalog(client, admin, tmp_path)
    machine.ready(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "provision", role="compute")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(inventory(1))
        own.result(own.written(own.heartbeat()) | change)
        assert own.heartbeat() == "poweroff"
    flows.tick_until(client, admin, "n1", "failed")
    error = node(client, admin, "n1")["last_error"]
    assert "the agent reported its deploy done, but " in error
    assert found in error


def test_an_aborted_deployments_agent_is_told_to_power_off(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    machine.ready(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "provision", role="compute")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(inventory(1))
        assert own.heartbeat("deploy").startswith("wait ")
        machine.act(client, admin, "n1", "abort")
        assert own.heartbeat("deploy") == "poweroff"  # even while it works
        assert own.http.get(f"/agent/{booted.token}/image").status_code == 410


@pytest.mark.parametrize("overrides", [{"agent_heartbeat_timeout": 2.0}])
def test_an_agent_that_goes_silent_fails_its_node(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    machine.ready(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "provision", role="compute")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(inventory(1))
        assert own.heartbeat().startswith("deploy ")
    tick(client)
    assert node(client, admin, "n1")["state"] == "provisioning"  # heard from just now
    time.sleep(2.5)  # past PROVISIONER_AGENT_HEARTBEAT_TIMEOUT, with not a word
    flows.tick_until(client, admin, "n1", "failed")
    last_error = node(client, admin, "n1")["last_error"]
    assert last_error.startswith("agent: the deploy agent stopped heartbeating: last heard"), (
        last_error
    )
    assert "PROVISIONER_AGENT_HEARTBEAT_TIMEOUT is 2 s" in last_error


def test_no_disk_fitting_the_profile_fails_the_deployment_naming_the_disks(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    small = inventory(1, [disk("vda", 16), disk("sdb", 64)])
    machine.catalog(client, admin, tmp_path)
    fake = machine.ready(client, admin, fleet, "n1", 1, small)
    machine.act(client, admin, "n1", "provision", role="compute")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    with machine.running(client, address_of(1), booted.token) as own:
        own.inventory(small)
        assert own.heartbeat() == "poweroff"
        assert own.heartbeat() == "poweroff"
    flows.tick_until(client, admin, "n1", "failed")
    last_error = node(client, admin, "n1")["last_error"]
    assert "no disk fits the root-disk hints (smallest, at least 100 GB)" in last_error
    assert "disks seen: vda (16.0 GB), sdb (64.0 GB)" in last_error
    assert BootDevice.DISK not in fake.boots


def test_unknown_tokens_are_404_and_bad_inventories_422_changing_nothing(
    client: TestClient, app: FastAPI, admin: dict[str, str], fleet: FakeFleet
) -> None:
    with machine.running(client, address_of(9), "no-such-token-" + "x" * 30) as stranger:
        assert stranger.post("inventory", inventory(9)).status_code == 404
        assert stranger.post("heartbeat", {"busy": ""}).status_code == 404
        done = {"command": "wipe", "ok": True, "disks": []}
        assert stranger.post("result", done).status_code == 404
        for what in ("image", "config-drive"):
            assert stranger.http.get(f"/agent/{stranger.token}/{what}").status_code == 404

    fake = machine.enroll(client, admin, fleet, "n1", 1)
    machine.act(client, admin, "n1", "inspect")
    booted = machine.powered_and_booted(client, admin, "n1", mac_of(1), address_of(1))
    client.portal.call(flows.services(app).boot.hops.flush)  # type: ignore[union-attr]
    before = snapshot(app)
    slash = inventory(1, [disk("vda", 240) | {"name": "../vda"}])
    huge = inventory(1)
    huge["system"]["vendor"] = "A" * 10_000
    many = inventory(1, [disk(f"d{i}", 1) for i in range(65)])
    with machine.running(client, address_of(1), booted.token) as own:
        for bad in (slash, huge, many, {"disks": "vda"}, [1, 2]):
            refused = own.post("inventory", bad)
            assert refused.status_code == 422, refused.text
        assert own.post("heartbeat", {"busy": "mining"}).status_code == 422
        assert own.post("result", {"command": "format", "ok": True}).status_code == 422
    assert snapshot(app) == before
    assert node(client, admin, "n1")["nics"] == [{"mac": mac_of(1), "pxe": True}]
    assert fake.boots == [BootDevice.NETWORK]


# --- 5. discovery -------------------------------------------------------------------


def test_an_unknown_machine_runs_the_agent_and_is_known_by_its_inventory(
    client: TestClient, admin: dict[str, str], agent: build.Agent
) -> None:
    mac = mac_of(7)
    first = machine.netboot(client, mac, address_of(7))
    assert f"{BASE}/boot/agent/{agent.key}/vmlinuz?token={first.token}" in first.script
    assert "BOOTIF=01-" + mac.replace(":", "-") in first.script
    # Booting again before it has reported: the same job, the same token.
    assert machine.netboot(client, mac, address_of(7)).token == first.token

    listed = client.get("/api/v1/nodes", headers=admin).json()["items"]
    assert [(n["state"], n["nics"]) for n in listed] == [
        ("discovered", [{"mac": mac, "pxe": True}])
    ]
    name = listed[0]["name"]
    with machine.running(client, address_of(7), first.token) as own:
        assert re.fullmatch(r"wait \d+", own.heartbeat())
        own.inventory(inventory(7))
        assert own.heartbeat() == "poweroff"

    found = node(client, admin, name)
    assert found["state"] == "discovered"
    assert {nic["mac"] for nic in found["nics"]} == {mac, mac_of(7, 1)}
    shown = client.get(f"/api/v1/nodes/{name}/inventory", headers=admin)
    assert shown.status_code == 200, shown.text
    # What the agent saw, in the one view of a node's facts (merged: no BMC here).
    assert shown.json()["facts"]["serial"] == "ACME-0007"
    assert shown.json()["facts"]["in_band"]["system"]["serial"] == "ACME-0007"
    # Reported: a boot now is from its disk, with no agent and no token.
    later = client.get("/boot/ipxe", params={"mac": mac}).text
    assert "provisioner.token" not in later
    assert "local disk" in later


def test_an_inventory_posted_again_after_the_job_ended_lets_the_agent_go_on(
    client: TestClient, admin: dict[str, str]
) -> None:
    """init.sh posts its inventory until it is answered 2xx, before its first heartbeat.
    When the answer to the first post is lost, the retry comes after the inspection has
    ended: a refusal keeps the machine posting for ever, and a discovered machine has no
    BMC to power it off. Answered, it heartbeats and is told to power off."""
    mac = mac_of(8)
    booted = machine.netboot(client, mac, address_of(8))
    with machine.running(client, address_of(8), booted.token) as own:
        own.inventory(inventory(8))
        again = own.post("inventory", inventory(8))
        assert again.status_code == 200, again.text
        assert own.heartbeat() == "poweroff"


# --- 6. secrets ---------------------------------------------------------------------


def test_agent_answers_carry_no_bmc_password_and_no_other_nodes_token(
    client: TestClient, admin: dict[str, str], fleet: FakeFleet, tmp_path: Path
) -> None:
    machine.catalog(client, admin, tmp_path)
    for n in (1, 2):
        machine.ready(client, admin, fleet, f"n{n}", n)
    for n in (1, 2):
        machine.act(client, admin, f"n{n}", "provision", role="compute")
    # Both powered on again (after their inspections) to boot their deployments.
    flows.tick_until(
        client,
        admin,
        "n2",
        lambda: all(flows.powered_on(client, admin, f"n{n}") == 2 for n in (1, 2)),
        "both powered on",
    )
    one = machine.netboot(client, mac_of(1), address_of(1))
    two = machine.netboot(client, mac_of(2), address_of(2))
    assert one.token != two.token
    seen = [one.script]
    with machine.running(client, address_of(1), one.token) as own:
        own.inventory(inventory(1))
        command = own.heartbeat()
        seen.append(command)
        seen += [v.decode() for v in own.config_drive().values()]
        seen.append(own.heartbeat("deploy"))
        own.result(own.written(command))
        seen.append(own.heartbeat())
    assert command.startswith("deploy /dev/vdb ")
    for text in seen:
        assert PASSWORD not in text
        assert two.token not in text
    assert one.token not in two.script
    assert PASSWORD not in two.script
