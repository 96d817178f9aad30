"""The whole life of real machines, proven with QEMU VMs: ``provisioner-lab up --vms``
serves three VMs behind BMCs (one BIOS, one UEFI network-booting through EDK2's own PXE
client and TFTP ``snponly.efi``, one left out of the manifest), the service boots the
deploy agent to inspect them, writes the lab's test image (fed as qcow2) onto their
disks, boots them from disk and waits for the written system's first-boot callback;
then one is reimaged, one released with a metadata wipe whose zeros are read from the
VM's disk file on the host, and the unlisted one is discovered by network-booting.

Five VM boots run two at a time on a 2-core machine under pure emulation: the deadlines
are generous and the test asserts what happened, not how fast. When it fails, every
VM's serial console, the lab's DHCP log and the service's log are copied to
``test-artefacts/`` (or ``$PROVISIONER_TEST_ARTEFACTS``). Needs root, QEMU, OVMF,
dnsmasq, ipmitool and the image tools (required when PROVISIONER_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import image, vmnet
from provisioner.agent import build
from tests.lab.conftest import free_port_block, need_vm_lab
from tests.lab.test_lab_vms_cli import Lab, word_after
from tests.serving import BIN, clean_env, poll

START_DEADLINE = 240
# Import to active: two agent boots, an image write and a boot from disk per VM, two
# VMs at once on a loaded 2-core machine.
DEPLOY_DEADLINE = 1500
PASSWORD = "vm-secret"
BIOS, UEFI, UNLISTED = "lab-r01-u01", "lab-r01-u02", "lab-r01-u03"
MIB = 2**20


class VmLab:
    """The running lab, the API of its service and what the test reads on the host."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        service = lab.line("service: ")
        started = lab.line("starting 3 VMs")
        assert service is not None, lab.output()
        assert started is not None, lab.output()
        self.url = word_after(service, "service: ")
        self.token = Path(word_after(service, "admin token in ")).read_text().strip()
        self.namespace = word_after(started, "in namespace ")
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get(f"/api/v1/nodes/{name}").raise_for_status().json()
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (
            self.api.get(f"/api/v1/nodes/{name}/events").raise_for_status().json()
        )
        return events

    def serial(self, name: str) -> str:
        log = self.workdir / name / "serial.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def wait_state(self, names: list[str], state: str, deadline: float) -> None:
        poll(
            lambda: all(self.node(name)["state"] == state for name in names),
            deadline,
            lambda: self.story(names, f"not all {state}"),
        )

    def story(self, names: list[str], what: str) -> str:
        """What happened, for a failure's message: each node's state and last events,
        and the end of its console."""
        parts = [what]
        for name in names:
            try:
                node = self.node(name)
                events = self.events(name)[-12:]
            except httpx.HTTPError as exc:
                parts.append(f"{name}: {exc}")
                continue
            parts.append(f"--- {name}: {node['state']} ({node['last_error']})")
            parts += [f"  {e['time'][11:19]} {e['kind']}: {e['message'][:160]}" for e in events]
            parts.append("  console: " + self.serial(name)[-600:].replace("\n", "\n    "))
        return "\n".join(parts)

    def ipmitool(self, port: int, *args: str) -> None:
        command = [
            "ip", "netns", "exec", self.namespace, "ipmitool", "-I", "lanplus",
            "-H", str(vmnet.NETWORK.network_address + 1), "-p", str(port),
            "-U", "admin", "-E", *args,
        ]  # fmt: skip
        env = {**os.environ, "IPMI_PASSWORD": PASSWORD}
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, f"ipmitool {' '.join(args)}: {done.stderr}"

    def keep_artefacts(self, test: str) -> Path:
        into = Path(os.environ.get("PROVISIONER_TEST_ARTEFACTS", "test-artefacts")) / test
        into.mkdir(parents=True, exist_ok=True)
        for log in (*self.workdir.glob("*/serial.log"), *self.workdir.glob("*/events.log")):
            shutil.copyfile(log, into / f"{log.parent.name}-{log.name}")
        for log in (self.workdir / "net").glob("*.log"):
            shutil.copyfile(log, into / f"net-{log.name}")
        service_log = self.workdir / "service" / "service.log"
        if service_log.exists():
            shutil.copyfile(service_log, into / "service.log")
        (into / "lab-output.txt").write_text("\n".join(self.lab.lines) + "\n")
        return into.resolve()


@pytest.fixture
def vm_lab(agent: build.Agent, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[VmLab]:
    need_vm_lab("ipmitool")
    workdir = tmp_path / "lab"
    lab = Lab(
        [
            "--vms", "3", "--firmware", "mixed", "--uefi-pxe", "edk2", "--unlisted", "1",
            "--role", "web",
            "--manifest", str(tmp_path / "rack.csv"),
            "--control-dir", str(tmp_path / "control"),
            "--workdir", str(workdir),
            "--base-port", str(free_port_block(3)),
            "--password", PASSWORD,
            "--agent-dir", str(agent.directory.parent),
        ],
        clean_env(tmp_path / "home"),
    )  # fmt: skip
    running: VmLab | None = None
    try:
        poll(
            lambda: lab.line("lab up:") or lab.process.poll() is not None,
            START_DEADLINE,
            lambda: f"the lab did not come up:\n{lab.output()}",
        )
        assert lab.process.poll() is None, lab.output()
        running = VmLab(lab, workdir)
        yield running
    finally:
        # Set by tests/lab/conftest.py's report hook; unset when the set-up failed.
        failed = getattr(request.node, "call_failed", True)
        if running is not None and failed:
            print(f"VM lab artefacts kept in {running.keep_artefacts(request.node.name)}")
        lab.process.send_signal(signal.SIGINT)
        lab.process.wait(timeout=120)
        if running is not None:
            assert running.namespace not in vmnet.ip("netns", "list")


def test_vms_are_inspected_deployed_reimaged_released_and_discovered(
    vm_lab: VmLab, lab_image: image.Image, tmp_path: Path
) -> None:
    qcow2 = tmp_path / "lab.qcow2"
    image.export(lab_image, qcow2, image.Format.QCOW2)
    checksum = hashlib.sha256(qcow2.read_bytes()).hexdigest()
    api = vm_lab.api
    created = api.post(
        "/api/v1/images",
        json={
            "name": "lab-image",
            "os_family": "other",
            "version": "1",
            "deploy": "image",
            "image_url": f"file://{qcow2}",
            "checksum": f"sha256:{checksum}",
            "format": "qcow2",
        },
    )
    assert created.status_code == 201, created.text
    role = {"name": "web", "default_image": "lab-image", "handoff": "immediate"}
    assert api.post("/api/v1/roles", json=role).status_code == 201
    imported = subprocess.run(
        [str(BIN / "provisioner"), "rack", "import", str(tmp_path / "rack.csv")],
        env={**clean_env(tmp_path / "home"), "PROVISIONER_URL": vm_lab.url,
             "PROVISIONER_TOKEN": vm_lab.token},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr

    # The racking flow: inspected by the agent, the image written, booted, handed off.
    vm_lab.wait_state([BIOS, UEFI], "active", DEPLOY_DEADLINE)
    for name, mode in ((BIOS, "bios"), (UEFI, "uefi")):
        assert f"lab image booted {name}" in vm_lab.serial(name)
        node = vm_lab.node(name)
        assert node["hardware_profile"] == "lab-qemu"
        inventory = api.get(f"/api/v1/nodes/{name}/inventory").json()
        assert inventory["source"] == "ipmi+agent"
        in_band = inventory["facts"]["in_band"]
        assert in_band["boot_mode"] == mode
        assert in_band["system"]["serial"] == inventory["facts"]["serial"]
        assert [nic["mac"] for nic in in_band["nics"]] == [n["mac"] for n in node["nics"]]
        kinds = [e["kind"] for e in vm_lab.events(name)]
        for kind in ("inspected", "agent", "boot-file", "callback-done", "handed-off"):
            assert kind in kinds, vm_lab.story([name], f"no {kind} event")
    # EDK2's own PXE client fetched iPXE over the service's TFTP server.
    tftp = [e["message"] for e in vm_lab.events(UEFI) if e["kind"] == "boot-tftp"]
    assert any("snponly.efi" in m and ": ok," in m for m in tftp), tftp
    # Before it, dnsmasq's answers to the firmware and then to iPXE, read from its log.
    dhcp = [e["message"] for e in vm_lab.events(UEFI) if e["kind"] == "boot-dhcp"]
    assert any("PXEClient" in m and "boot file snponly.efi" in m for m in dhcp), dhcp
    assert any("to iPXE" in m and "bootstrap.ipxe" in m for m in dhcp), dhcp

    # One reimaged, one released with a wipe, one unknown machine powered on.
    assert api.post(f"/api/v1/nodes/{BIOS}/actions/reimage").status_code == 202
    assert api.post(f"/api/v1/nodes/{UEFI}/actions/release").status_code == 202
    unlisted_port = vm_lab.node(BIOS)["bmc"]["port"] + 2
    vm_lab.ipmitool(unlisted_port, "chassis", "bootdev", "pxe")
    vm_lab.ipmitool(unlisted_port, "power", "on")
    # Read while its QEMU runs: the agent powers a discovered machine off once it reported.
    serial, mac = _smbios_of(vm_lab.workdir / UNLISTED)

    vm_lab.wait_state([UEFI], "ready", DEPLOY_DEADLINE)
    wipes = api.get(f"/api/v1/nodes/{UEFI}/wipes").json()
    assert [(w["disk"], w["method"], w["ok"]) for w in wipes] == [("/dev/vda", "metadata", True)]
    assert wipes[0]["bytes"] == 128 * MIB
    assert "all zero" in wipes[0]["verified"]
    assert vm_lab.node(UEFI)["power_state"] == "off"
    _assert_zero_ends(vm_lab.workdir / UEFI / "disk.raw")

    vm_lab.wait_state([BIOS], "active", DEPLOY_DEADLINE)
    assert vm_lab.serial(BIOS).count(f"lab image booted {BIOS}") == 2
    provisions = [e for e in vm_lab.events(BIOS) if e["kind"] == "handed-off"]
    assert len(provisions) == 2

    def discovered() -> dict[str, Any] | None:
        nodes = api.get("/api/v1/nodes", params={"state": "discovered"}).json()["items"]
        for node in nodes:
            found = api.get(f"/api/v1/nodes/{node['name']}/inventory")
            if found.status_code == 200:
                return {"node": node, "facts": found.json()["facts"]}
        return None

    poll(lambda: discovered() is not None, DEPLOY_DEADLINE, lambda: "no VM was discovered")
    enlisted = discovered()
    assert enlisted is not None
    assert enlisted["facts"]["serial"] == serial
    assert enlisted["facts"]["in_band"]["system"]["product"] == "Virtual Server VQ-1"
    assert [nic["mac"] for nic in enlisted["node"]["nics"]] == [mac]


def _assert_zero_ends(disk: Path) -> None:
    """The first and last 64 MiB of a released VM's disk, read on the host: the wipe
    zeroed them (the image's partition table and its config drive lived there)."""
    size = disk.stat().st_size
    with disk.open("rb") as data:
        head = data.read(64 * MIB)
        data.seek(size - 64 * MIB)
        tail = data.read(64 * MIB)
    assert head.count(0) == len(head) == 64 * MIB
    assert tail.count(0) == len(tail) == 64 * MIB


def _smbios_of(workdir: Path) -> tuple[str, str]:
    """The serial number and MAC the lab gave a VM, from its QEMU's command line."""
    found: list[str] = []

    def running() -> bool:
        for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
            try:
                words = (pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            line = " ".join(words)
            if words[0].endswith("qemu-system-x86_64") and str(workdir) in line:
                found.append(line)
                return True
        return False

    poll(running, 60, lambda: f"no QEMU of {workdir} started")
    serial = re.search(r"type=1,.*?serial=([^, ]+)", found[0])
    mac = re.search(r"mac=([0-9a-f:]{17})", found[0])
    assert serial is not None, found[0]
    assert mac is not None, found[0]
    return serial.group(1), mac.group(1)
