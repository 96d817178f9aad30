"""Real virtual machines behind the lab's virtual BMCs (lab/vm.py, lab/vmnet.py): QEMU
under TCG in a private network namespace whose DHCP server is dnsmasq with the
configuration the project renders, driven by ipmitool through a lab BMC.

Each VM takes a core and tens of seconds per boot (2-3x on a loaded machine), so there
are three boots in all: deadlines are generous, and the tests assert what happened,
not how fast. Needs root, qemu-system-x86_64, ip and dnsmasq (required when
PROVISIONER_REQUIRE_TOOLS=1) and builds the agent ramdisk once per session.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import faults, vmnet
from lab.machine import Machine, build_machine
from lab.packet_loop import PacketLoop
from lab.vm import DISK, NIC, OVMF_CODE, OVMF_VARS, Vm, VmBmc, VmFirmware, attach, spec_for
from provisioner.agent import build
from tests.lab.conftest import REQUIRE_TOOLS, Node, free_port_block, ipmitool, need_vm_lab
from tests.serving import BIN, clean_env, poll

BOOT_DEADLINE = 420  # one network boot to the agent, on a busy 2-core machine
PASSWORD = "vm-secret"
SEED = 12


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_vm_lab()


@dataclass
class LabVm:
    """One VM behind one lab BMC on a lab network."""

    machine: Machine
    vm: Vm
    firmware: VmFirmware
    node: Node


_loop: PacketLoop | None = None


def packet_loop() -> PacketLoop:
    """One loop for the module's BMCs, never stopped, whose BMCs are never closed:
    closing a BMC's socket while pyghmi's I/O thread waits on it ends that thread, and
    with it every later BMC of the process."""
    global _loop
    if _loop is None:
        _loop = PacketLoop()
        threading.Thread(target=_loop.run, name="vm-bmcs", daemon=True).start()
    return _loop


@contextmanager
def lab_vm(
    network: vmnet.LabNetwork, workdir: Path, boot_mode: str, **spec: Any
) -> Iterator[LabVm]:
    machine = build_machine("vm-1", 0, SEED, ["52:54:00:5e:00:01"])
    machine.boot_mode = boot_mode
    firmware = attach(machine, network, workdir, **spec)
    loop = packet_loop()
    port = free_port_block(1)
    gate = faults.FaultGate(SEED, machine.name, faults.NO_FAULT)
    loop.bmcs.append(VmBmc(machine, "admin", PASSWORD, gate, loop, "127.0.0.1", port))
    try:
        yield LabVm(machine, firmware.vm, firmware, Node(machine.name, port, "admin", PASSWORD))
    finally:
        firmware.close()


def power(node: Node) -> str:
    return ipmitool(node, "power", "status").stdout.strip().rsplit(" ", 1)[-1]


@dataclass
class AgentApi:
    """Stands in for the agent endpoints the service does not have yet: records the
    inventories posted and answers heartbeats with the next of ``commands`` (``wait 2``
    when there is none)."""

    agent: build.Agent
    address: str
    commands: list[str] = field(default_factory=list)
    inventories: list[dict[str, Any]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    def script(self, port: int) -> bytes:
        base = f"http://{self.address}:{port}"
        return (
            "#!ipxe\n"
            f"kernel --name kernel {base}/vmlinuz initrd=initrd console=ttyS0 "
            f"provisioner.url={base} provisioner.token=t\n"
            f"initrd --name initrd {base}/initrd.img\n"
            "boot\n"
        ).encode()


def serve_agent_api(namespace: vmnet.Namespace, api: AgentApi) -> ThreadingHTTPServer:
    files = {"/vmlinuz": api.agent.kernel, "/initrd.img": api.agent.initrd}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            api.fetched.append(self.path)
            if self.path == "/boot/bootstrap.ipxe":
                self.answer(api.script(port))
            elif self.path in files:
                self.answer(files[self.path].read_bytes())
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.endswith("/inventory"):
                api.inventories.append(json.loads(body))
            if not self.path.endswith("/heartbeat"):
                self.answer(b"{}")
            else:
                self.answer((api.commands.pop(0) if api.commands else "wait 2").encode())

        def answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = namespace.inside(lambda: ThreadingHTTPServer((api.address, 0), Handler))
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serial(vm: Vm) -> str:
    return vm.serial_log.read_text(errors="replace") if vm.serial_log.exists() else ""


def test_ipmi_power_and_boot_device_drive_a_bios_vm(agent: build.Agent, tmp_path: Path) -> None:
    """ipmitool against the VM's lab BMC: power on starts QEMU, a next-boot-only PXE
    request is used by that boot and the disk comes first again after it, a persistent
    one plus a power cycle network-boots the VM again, so does a reboot by the guest
    itself after a next-boot-only request, soft off leaves the decision to the guest
    (which ignores it), the guest powering itself off
    shows as power off, power off ends QEMU, and closing the lab network stops a
    running VM and removes the namespace. The VM network-boots through dnsmasq
    (the project's configuration) and iPXE into the agent, whose API is played here by
    a small server in the namespace (the service has no agent endpoints yet)."""
    with vmnet.LabNetwork(tmp_path / "net") as network:
        api = AgentApi(agent, network.address)
        server = serve_agent_api(network.namespace, api)
        network.on_close(server.shutdown)
        network.start_dhcp(f"http://{network.address}:{server.server_address[1]}")
        with lab_vm(network, tmp_path / "vm", "bios") as lab:
            vm, node = lab.vm, lab.node

            def booted(count: int) -> bool:
                return len(api.inventories) >= count

            def why() -> str:
                return (
                    f"fetched {api.fetched}; errors {lab.firmware.errors}\nconsole:\n"
                    f"{serial(vm)[-2000:]}\nDHCP:\n{network.dhcp_log.read_text()[-2000:]}"
                )

            assert power(node) == "off"
            assert vm.process is None
            ipmitool(node, "chassis", "bootdev", "pxe")
            ipmitool(node, "power", "on")
            assert power(node) == "on"
            poll(lambda: vm.qmp is not None, 60, lambda: "QEMU did not start")
            assert vm.running
            assert vm.qmp is not None
            assert vm.qmp.execute("query-status")["status"] == "running"
            poll(lambda: booted(1), BOOT_DEADLINE, why)
            inventory = api.inventories[0]
            assert inventory["system"]["serial"] == lab.machine.inventory.serial
            assert inventory["system"]["uuid"] == str(lab.machine.uuid)
            assert inventory["nics"][0]["mac"] == "52:54:00:5e:00:01"
            assert inventory["boot_mode"] == "bios"
            assert api.fetched[:3] == ["/boot/bootstrap.ipxe", "/vmlinuz", "/initrd.img"]
            # The request was for one boot: the disk is first again for the next.
            order = vm.boot_order()
            assert order[DISK] < order[NIC]
            assert lab.machine.boots == ["pxe"]

            ipmitool(node, "chassis", "bootdev", "pxe", "options=persistent")
            # Applied at once, so that a reboot by the guest itself would follow it.
            poll(lambda: vm.boot_order()[NIC] == 1, 30, lambda: f"order {vm.boot_order()}")
            before = len(api.fetched)
            ipmitool(node, "power", "cycle")
            poll(lambda: booted(2), BOOT_DEADLINE, why)
            assert api.fetched[before] == "/boot/bootstrap.ipxe"
            assert vm.boot_order() == {NIC: 1, DISK: 2}
            assert lab.machine.boots == ["pxe", "pxe"]
            assert "52:54:00:5e:00:01" in network.dhcp_log.read_text()

            # The guest reboots itself: it boots as the BMC's flags now say, and a
            # next-boot-only request is used up by that boot as by one the BMC starts.
            ipmitool(node, "chassis", "bootdev", "pxe")
            api.commands.append("reboot")
            poll(lambda: booted(3), BOOT_DEADLINE, why)
            assert lab.machine.boots == ["pxe", "pxe", "pxe"]
            assert not lab.machine.boot.valid
            poll(lambda: vm.boot_order()[DISK] == 1, 30, lambda: f"order {vm.boot_order()}")

            # Soft off is the ACPI button, which the agent ignores: the VM stays on.
            ipmitool(node, "power", "soft")
            assert power(node) == "on"
            api.commands.append("poweroff")  # the guest powers itself off: QEMU exits
            poll(lambda: power(node) == "off", 120, why)
            assert vm.process is None
            assert "provisioner-agent: powering off" in serial(vm)

            ipmitool(node, "power", "on")
            poll(lambda: vm.running, 60, lambda: "QEMU did not start")
            process = vm.process
            assert process is not None
            ipmitool(node, "power", "off")
            assert process.wait(timeout=30) is not None
            assert power(node) == "off"
            ipmitool(node, "power", "on")  # left running for the teardown to stop
            poll(lambda: vm.running, 60, lambda: "QEMU did not start")
            process = vm.process
            assert process is not None
    assert network.namespace.name not in vmnet.ip("netns", "list")
    assert process.poll() is not None


def test_an_unknown_uefi_vm_pxe_boots_the_agent_from_the_service(
    agent: build.Agent,
    tmp_path: Path,
) -> None:
    """An unknown UEFI VM, powered on through its BMC, PXE-boots as real UEFI servers
    do: OVMF's own PXE client gets an address from dnsmasq (the project's configuration,
    snponly), fetches snponly.efi from the service's TFTP server, iPXE fetches the
    bootstrap script from the service, which records a ``discovered`` node and boots it
    the discovery image: the agent. The service, its TFTP server and the VM all run in
    the namespace; the test reaches the API through the lab's forwarder. The agent then
    fails to post its inventory: the service has no /agent/... endpoints yet."""
    if not OVMF_CODE.is_file():
        if REQUIRE_TOOLS:
            pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but {OVMF_CODE} is missing")
        pytest.skip(f"needs OVMF ({OVMF_CODE})")
    with vmnet.LabNetwork(tmp_path / "net") as network:
        service, api = serve_in(network, tmp_path, agent)
        network.start_dhcp(f"http://{network.address}:8080", snponly=True)
        with lab_vm(network, tmp_path / "vm", "uefi", uefi_pxe="edk2") as lab:
            name = "discovered-5254005e0001"

            def discovered() -> bool:
                found = api.get("/api/v1/nodes", params={"state": "discovered"}).json()
                return name in [n["name"] for n in found["items"]]

            def started() -> bool:
                return "provisioner-agent: could not post the inventory" in serial(lab.vm)

            def why() -> str:
                return (
                    f"errors {lab.firmware.errors}\nconsole:\n{serial(lab.vm)[-3000:]}\n"
                    f"DHCP:\n{network.dhcp_log.read_text()[-2000:]}\nservice:\n"
                    + (tmp_path / "service.log").read_text(errors="replace")[-3000:]
                )

            ipmitool(lab.node, "chassis", "bootdev", "pxe", "options=efiboot")
            ipmitool(lab.node, "power", "on")
            poll(discovered, BOOT_DEADLINE, why)
            poll(started, BOOT_DEADLINE, why)
            events = api.get(f"/api/v1/nodes/{name}/events").json()
            hops = [(e["kind"], e["message"]) for e in events if e["kind"].startswith("boot-")]
            assert any(k == "boot-tftp" and "TFTP snponly.efi" in m for k, m in hops), hops
            # Answered before the machine had a node: moved to it once discovered.
            assert any(k == "boot-dhcp" and "boot file snponly.efi" in m for k, m in hops), hops
            assert ("boot-ipxe", "iPXE script: discovery image") in hops, hops
            assert service.poll() is None
            qemu = lab.vm.process
            assert qemu is not None
    assert network.namespace.name not in vmnet.ip("netns", "list")
    assert qemu.poll() is not None
    assert service.poll() is not None


def serve_in(
    network: vmnet.LabNetwork, tmp: Path, built: build.Agent
) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """`provisioner serve` inside the namespace on the bridge's address (port 8080, TFTP
    on 69, reading dnsmasq's log for DHCP hops), the agent as its discovery image; the
    API as the host sees it."""
    images = tmp / "images" / "agent"
    images.mkdir(parents=True)
    shutil.copyfile(built.kernel, images / "vmlinuz")
    shutil.copyfile(built.initrd, images / "initrd.img")
    url = f"http://{network.address}:8080"
    env = clean_env(tmp / "home")
    env.update(
        PROVISIONER_DATA_DIR=str(tmp / "data"),
        PROVISIONER_IMAGES_DIR=str(tmp / "images"),
        PROVISIONER_TFTP_ENABLED="1",
        PROVISIONER_TFTP_ADDRESS=network.address,
        PROVISIONER_TFTP_PORT="69",
        PROVISIONER_TFTP_ROOT=str(tmp / "tftp"),
        PROVISIONER_DHCP_LOG=str(network.dhcp_log),
        PROVISIONER_BOOT_URL=url,
        PROVISIONER_RECONCILE_INTERVAL="0.5",
        PROVISIONER_POWER_SYNC_INTERVAL="0",
        PROVISIONER_DISCOVERY_KERNEL_URL="agent/vmlinuz",
        PROVISIONER_DISCOVERY_INITRD_URL="agent/initrd.img",
        PROVISIONER_DISCOVERY_KERNEL_ARGS=f"console=ttyS0 provisioner.url={url} "
        "provisioner.token=discovery",
    )

    def provisioner(*args: str) -> str:
        return subprocess.run(
            [BIN / "provisioner", *args], env=env, capture_output=True, text=True, check=True
        ).stdout

    provisioner("pxe", "assets", "--root", str(tmp / "tftp"))
    token = provisioner("token", "create", "--scope", "admin").strip()
    command = [str(BIN / "provisioner"), "serve", "--host", network.address, "--port", "8080"]
    service = network.run(command, tmp / "service.log", env)
    forwarder = network.forward(8080)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{forwarder.port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    network.on_close(api.close)

    def ready() -> bool:
        assert service.poll() is None, (tmp / "service.log").read_text(errors="replace")
        try:
            return api.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    poll(ready, 90, lambda: "the service did not become ready")
    return service, api


# A lab network in a process of its own, with dnsmasq and a stand-in for QEMU (sleep)
# inside: what a test interrupts or kills. Ctrl-C is Python's KeyboardInterrupt even when
# the test suite itself runs as a background job, whose children inherit SIGINT ignored.
_LAB_PROCESS = """
import signal, sys, time
from pathlib import Path
from lab import vmnet
signal.signal(signal.SIGINT, signal.default_int_handler)
with vmnet.LabNetwork(Path(sys.argv[1])) as network:
    network.add_tap()
    network.start_dhcp(f"http://{network.address}:8080")
    guest = vmnet.spawn(network.namespace.exec_args(["sleep", "600"]), 1)
    network.on_close(lambda: vmnet.stop(guest))
    print(network.namespace.name, network.dhcp.pid, guest.pid, flush=True)
    time.sleep(600)
"""


def start_lab_process(workdir: Path) -> tuple[subprocess.Popen[str], str, list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _LAB_PROCESS, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    name, *pids = process.stdout.readline().split()
    assert name.startswith(vmnet.PREFIX), f"the lab process did not start ({name!r})"
    return process, name, [int(pid) for pid in pids]


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def test_ctrl_c_leaves_no_namespace_and_no_process(tmp_path: Path) -> None:
    process, name, pids = start_lab_process(tmp_path / "lab")
    assert name in vmnet.ip("netns", "list")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert name not in vmnet.ip("netns", "list")
    assert all(gone(pid) for pid in pids), pids


def test_a_killed_labs_namespace_is_removed_by_the_next(tmp_path: Path) -> None:
    """SIGKILL cleans nothing up: the processes that keep their credentials die with the
    lab (PR_SET_PDEATHSIG), and the next lab network removes the namespace with what
    still runs in it (dnsmasq, which dropped root and with it that signal)."""
    process, name, pids = start_lab_process(tmp_path / "killed")
    process.kill()
    process.wait(timeout=30)
    assert name in vmnet.ip("netns", "list")  # nothing cleaned up yet
    guest = pids[1]
    poll(lambda: gone(guest), 10, lambda: "the guest outlived the lab that started it")
    with vmnet.LabNetwork(tmp_path / "next") as network:
        assert name not in vmnet.ip("netns", "list")
        assert all(gone(pid) for pid in pids), pids
        network.start_dhcp(f"http://{network.address}:8080")
        dhcp = network.dhcp
        assert dhcp is not None
        assert dhcp.pid in network.namespace.pids()
        own = network.namespace.name
    assert own not in vmnet.ip("netns", "list")
    assert dhcp.poll() is not None


def test_a_namespace_whose_owner_runs_is_left_alone(tmp_path: Path) -> None:
    """Another lab's namespace (another engineer's, another test's) is not stale."""
    process, name, _ = start_lab_process(tmp_path / "other")
    try:
        with vmnet.LabNetwork(tmp_path / "mine"):
            assert name in vmnet.ip("netns", "list")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_the_qemu_command_line(tmp_path: Path) -> None:
    """What docs/lab-vms.md says works: TCG, identity, device ids, the per-VM VARS copy
    and, for EDK2's own PXE, a NIC without an option ROM."""
    machine = build_machine("vm-1", 0, SEED, ["52:54:00:5e:00:01"])
    machine.boot_mode = "uefi"
    vm = Vm(spec_for(machine, "tap0", uefi_pxe="edk2"), tmp_path, None)
    line = " ".join(vm.command(NIC))
    assert "-accel tcg -cpu max" in line
    assert f"-uuid {machine.uuid}" in line
    assert f"serial={machine.inventory.serial}" in line
    assert "id=nic0,netdev=n0,mac=52:54:00:5e:00:01,bootindex=1,romfile= " in line
    assert "id=disk0,drive=d0,bootindex=2" in line
    assert f"unit=1,file={tmp_path / 'OVMF_VARS.fd'}" in line
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == OVMF_VARS.read_bytes()
    assert "-no-reboot" not in line
    assert "-no-shutdown" not in line
    assert (tmp_path / "disk.raw").stat().st_size == vm.spec.disk_bytes


def test_a_vm_that_cannot_start_stays_off(tmp_path: Path) -> None:
    """QEMU refusing its command line is a power-on that did not happen: the BMC then
    reports the machine off, and the VM's errors say why."""
    with (
        vmnet.LabNetwork(tmp_path / "net") as network,
        lab_vm(network, tmp_path / "vm", "bios", memory_mb=-1) as lab,
    ):
        ipmitool(lab.node, "power", "on")
        poll(lambda: power(lab.node) == "off", 60, lambda: "the VM is still on")
        assert lab.vm.process is None
        assert any("did not start" in error for error in lab.firmware.errors)
