"""Emulated machines that boot like machines. The pieces first (iPXE interpretation of
the service's own scripts, callbacks found in its own rendered answer files, boot flags
consumed like firmware does), then a real ``provisioner serve`` with its embedded TFTP
server and reconciler against a lab started with ``--tftp`` and ``--ipxe-url``: the
machines' hops and callbacks land on the nodes' timelines, faults show as they should,
and an unknown machine is discovered."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyghmi.ipmi.command import Command

from lab import installer, ipxe
from lab.machine import BootDevice, BootFlags, build_machine
from lab.netboot import source_address
from provisioner.boot import answers, scripts
from tests.lab.conftest import Lab, Node
from tests.serving import BIN, Served, poll

MAC = "52:54:00:aa:bb:cc"


# --- iPXE ----------------------------------------------------------------------------


class FakeHost:
    """Serves scripts from a dict; files fail when their URL is in ``broken``."""

    def __init__(self, scripts: dict[str, str], broken: tuple[str, ...] = ()) -> None:
        self.scripts = scripts
        self.broken = broken
        self.fetched: list[str] = []
        self.slept: list[float] = []

    async def script(self, url: str) -> str:
        self.fetched.append(url)
        if url not in self.scripts:
            raise ipxe.FetchError("HTTP 404")
        return self.scripts[url]

    async def file(self, url: str, what: str) -> int:
        self.fetched.append(url)
        if url in self.broken:
            raise ipxe.FetchError("HTTP 500")
        return 1

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


BIOS = {"net0/mac": MAC, "platform": "pcbios", "buildarch": "i386"}
UEFI = {"net0/mac": MAC, "platform": "efi", "buildarch": "x86_64"}
BASE = "http://svc:8000"
NODE_URL = f"{BASE}/boot/ipxe?mac={MAC}&platform=pcbios&arch=i386"
INSTALL = scripts.Install(
    title="install tiny on n1 as role r (deployment 0123abcd)",
    kernel_url=f"{BASE}/boot/files/tiny/vmlinuz?token=t",
    initrd_url=f"{BASE}/boot/files/tiny/initrd.img?token=t",
    kernel_args=f"inst.ks={BASE}/boot/answers/t ip=dhcp",
)


def test_ipxe_chains_by_mac_and_boots_the_installer() -> None:
    host = FakeHost(
        {f"{BASE}/boot/bootstrap.ipxe": scripts.bootstrap(BASE), NODE_URL: scripts.install(INSTALL)}
    )
    outcome = asyncio.run(ipxe.run(f"{BASE}/boot/bootstrap.ipxe", BIOS, host))
    assert isinstance(outcome, ipxe.Installer)
    assert outcome.kernel_url == INSTALL.kernel_url
    assert outcome.args == f"initrd=initrd {INSTALL.kernel_args}"
    assert "(deployment 0123abcd)" in " ".join(outcome.console)
    assert host.fetched == [
        f"{BASE}/boot/bootstrap.ipxe",
        NODE_URL,
        INSTALL.kernel_url,
        INSTALL.initrd_url,
    ]


def test_ipxe_follows_the_failure_path_of_a_failed_fetch() -> None:
    host = FakeHost({NODE_URL: scripts.install(INSTALL)}, broken=(INSTALL.initrd_url,))
    outcome = asyncio.run(ipxe.run(NODE_URL, BIOS, host))
    assert outcome == ipxe.Reboot()
    assert host.slept == [30.0]  # the script's own sleep; the lab scales it


def test_ipxe_retries_the_bootstrap_chain_until_the_service_answers() -> None:
    bootstrap = f"{BASE}/boot/bootstrap.ipxe"
    host = FakeHost({bootstrap: scripts.bootstrap(BASE)})

    async def service_comes_back(seconds: float) -> None:
        host.slept.append(seconds)
        if len(host.slept) == 3:
            host.scripts[NODE_URL] = scripts.local_disk("n1 is ready")

    host.sleep = service_comes_back  # type: ignore[method-assign]
    outcome = asyncio.run(ipxe.run(bootstrap, BIOS, host))
    assert outcome == ipxe.LocalBoot("sanboot 0x80")
    assert host.slept == [10.0, 10.0, 10.0]


@pytest.mark.parametrize(("variables", "reason"), [(BIOS, "sanboot 0x80"), (UEFI, "exit")])
def test_ipxe_local_boot(variables: dict[str, str], reason: str) -> None:
    url = f"{BASE}/boot/ipxe"
    host = FakeHost({url: scripts.local_disk("n1 is ready")})
    assert asyncio.run(ipxe.run(url, variables, host)) == ipxe.LocalBoot(reason)


def test_ipxe_refuses_what_is_not_a_script_and_endless_loops() -> None:
    host = FakeHost({"http://a/x": "MZ\x90binary", "http://a/loop": "#!ipxe\n:a\ngoto a\n"})
    with pytest.raises(ipxe.ScriptError, match="not an iPXE script"):
        asyncio.run(ipxe.run("http://a/x", BIOS, host))
    with pytest.raises(ipxe.ScriptError, match="loops"):
        asyncio.run(ipxe.run("http://a/loop", BIOS, host))


# --- the installer's view of its answer file ------------------------------------------


@pytest.mark.parametrize(
    ("template", "family"),
    [("kickstart", "rhel"), ("preseed", "debian"), ("autoinstall", "ubuntu")],
)
def test_callbacks_come_from_the_rendered_answer_file(template: str, family: str) -> None:
    base = "http://127.0.0.1:8000"
    context = answers.AnswerContext(
        hostname="n1",
        domain=None,
        image=answers.ImageSpec("tiny", family, "9", "http://mirror/os/", template),
        role=answers.RoleSpec("compute"),
        profile=None,
        challenge="c",
        callback_url=f"{base}/callback/TOKEN",
        answer_url=f"{base}/boot/answers/TOKEN",
    )
    found = installer.answer_of(answers.kernel_arguments(context))
    suffix = "/user-data" if template == "autoinstall" else ""
    assert found == installer.Answer(
        f"{base}/boot/answers/TOKEN{suffix}", template == "autoinstall"
    )
    text = answers.render_answer(context)
    calls = installer.callbacks(text, is_yaml=found.yaml)
    kinds = [c.kind for c in calls]
    assert sorted(kinds) == sorted(installer.KINDS)
    assert kinds.index("started") < kinds.index("progress") < kinds.index("done")
    by_kind = {c.kind: c for c in calls}
    assert by_kind["done"].url == f"{base}/callback/TOKEN/done"
    assert by_kind["progress"].body == '{"message": "OS installed and configured"}'
    assert by_kind["started"].body is None
    assert installer.image_of(text) == "tiny"


def test_wipe_image_calls_back_the_url_on_its_command_line() -> None:
    args = "quiet provisioner.callback=http://s/callback/T"
    assert installer.wipe_callback(args) == "http://s/callback/T"
    assert installer.answer_of(args) is None


# --- firmware and boot flags ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def booted(self, device: BootDevice) -> None:
        self.events.append(device.name.lower())

    def powered_off(self) -> None:
        self.events.append("off")


def test_firmware_consumes_a_one_time_boot_device_and_keeps_a_persistent_one() -> None:
    machine = build_machine("n1", 0, 1, [MAC])
    firmware = machine.firmware = Recorder()
    machine.set_boot_flags(BootFlags(valid=True, device=BootDevice.PXE))
    machine.press_power_on()
    machine.reboot()  # an installer's reboot: the one-time request is used up
    machine.set_boot_flags(BootFlags(valid=True, persistent=True, device=BootDevice.PXE))
    machine.power_cycle()
    machine.hard_reset()
    machine.soft_off()
    assert firmware.events == ["pxe", "disk", "pxe", "pxe", "off"]
    assert machine.boots == ["pxe", "disk", "pxe", "pxe"]


def test_each_machine_has_its_own_boot_address() -> None:
    assert [source_address(i) for i in (0, 1, 254, 255, 999)] == [
        "127.1.0.1",
        "127.1.0.2",
        "127.1.0.255",
        "127.1.1.0",
        "127.1.3.232",
    ]


# --- against the real service ------------------------------------------------------------


@dataclass
class Rack:
    service: Served
    lab: Lab

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def ipmi(self, name: str) -> Command:
        node = self.node(name)
        return Command(
            bmc="127.0.0.1",
            userid=node.username.encode(),
            password=node.password.encode(),
            port=node.port,
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.lab.status(self.node(name))

    def events(self, name: str) -> list[dict[str, Any]]:
        response = self.service.api.get(f"/api/v1/nodes/{name}/events")
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()
        return events

    def kinds(self, name: str) -> list[str]:
        return [e["kind"] for e in self.events(name)]

    def state(self, name: str) -> str:
        state: str = self.service.api.get(f"/api/v1/nodes/{name}").json()["state"]
        return state

    def wait_for_events(self, name: str, wanted: list[str], timeout: float = 60) -> None:
        """Hops reach the timeline in batches, a fraction of a second after the fact."""
        poll(
            lambda: has_all(self.kinds(name), wanted),
            timeout,
            lambda: (self.kinds(name), self.status(name), self.lab.output[-20:]),
        )

    def wait_for_machine(self, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
        """The lab machine's boot state (`provisioner-lab status`)."""
        poll(lambda: self.status(name)["state"] == state, timeout, lambda: self.status(name))
        return self.status(name)


NODES = 7
FAULTS = {
    "lab-r01-u03": "installer-silent",
    "lab-r01-u04": "installer-fails",
    "lab-r01-u05": "boot-hang",
}
UNENROLLED = "lab-r01-u07"  # left out of the manifest the service imports


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rack]:
    tmp = tmp_path_factory.mktemp("netboot")
    service = Served(tmp)
    url, api = service.url, service.api
    lab: Lab | None = None
    try:
        extra = [f"--fault={node}={fault}" for node, fault in FAULTS.items()]
        lab = Lab(
            tmp,
            NODES,
            "--tftp",
            f"127.0.0.1:{service.tftp_port}",
            "--ipxe-url",
            f"{url}/boot/bootstrap.ipxe",
            "--boot-mode",
            "lab-r01-u02=uefi",
            "--install-time",
            "0.1",
            "--reboot-delay",
            "0.2",
            *extra,
        )
        with lab.manifest.open() as rows:
            enrolled = [row for row in csv.DictReader(rows) if row["name"] != UNENROLLED]
        manifest = tmp / "enrolled.csv"
        with manifest.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(enrolled[0]))
            writer.writeheader()
            writer.writerows(enrolled)
        imported = api.post(
            "/api/v1/racks/import",
            content=manifest.read_bytes(),
            headers={"Content-Type": "text/csv"},
        )
        assert imported.status_code == 201, imported.text
        image = {
            "name": "tiny",
            "os_family": "rhel",
            "version": "9",
            "kernel_url": "tiny/vmlinuz",
            "initrd_url": "tiny/initrd.img",
            "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
            "answer_template": "kickstart",
        }
        assert api.post("/api/v1/images", json=image).status_code == 201
        role = {"name": "compute", "default_image": "tiny"}
        assert api.post("/api/v1/roles", json=role).status_code == 201
        running = Rack(service, lab)
        names = [row["name"] for row in enrolled]
        poll(
            lambda: all(running.state(n) == "ready" for n in names),
            60,
            lambda: {n: running.state(n) for n in names},
        )
        yield running
    finally:
        if lab is not None:
            lab.stop()
        service.stop()


def provision(rack: Rack, name: str) -> None:
    response = rack.service.api.post(
        f"/api/v1/nodes/{name}/actions/provision", json={"role": "compute"}
    )
    assert response.status_code == 202, response.text


BOOT_HOPS = ["boot-tftp", "boot-ipxe", "boot-file", "boot-file", "boot-answer"]
CALLBACKS = ["callback-started", "callback-progress", "callback-done"]


def has_all(kinds: list[str], wanted: list[str]) -> bool:
    return all(kinds.count(k) >= wanted.count(k) for k in wanted)


def test_machines_install_and_run_their_os(rack: Rack) -> None:
    """Provisioning by the reconciler: network boot, install, callbacks from the
    kickstart, then disk boot into the installed OS. One BIOS and one UEFI machine."""
    names = ("lab-r01-u01", "lab-r01-u02")
    for name in names:
        provision(rack, name)
    for name in names:
        rack.wait_for_events(name, BOOT_HOPS + CALLBACKS)
        status = rack.wait_for_machine(name, "os-running")
        assert status["installed"] == "tiny"
        assert status["deployment"]
        assert status["power"] == "on"
        # Then disk only: the installer's reboot used up the one-time network boot,
        # and the service set disk boot and cycled the power.
        boots = status["boots"]
        assert "pxe" in boots
        assert set(boots[boots.index("pxe") + 1 :]) == {"disk"}, status
        kinds = rack.kinds(name)
        # Every hop before the installer's first callback, and done last of them.
        assert max(kinds.index(k) for k in BOOT_HOPS) < kinds.index("callback-started")
        assert kinds.index("callback-progress") < kinds.index("callback-done")
        text = " ".join(e["message"] for e in rack.events(name))
        loader = "ipxe.efi" if name.endswith("u02") else "undionly.kpxe"
        assert f"TFTP {loader}" in text
        assert "tiny/vmlinuz" in text
    assert rack.status("lab-r01-u02")["boot_mode"] == "uefi"
    poll(
        lambda: all(rack.state(n) in ("provisioned", "active") for n in names),
        30,
        lambda: [rack.state(n) for n in names],
    )


def test_installer_silent_never_calls_back(rack: Rack) -> None:
    name = "lab-r01-u03"
    provision(rack, name)
    rack.wait_for_events(name, BOOT_HOPS)
    time.sleep(1.5)  # time enough for callbacks, were there any
    assert not [k for k in rack.kinds(name) if k.startswith("callback-")]
    status = rack.status(name)
    assert status["state"] == "installer-running", status
    assert status["installed"] is None
    assert rack.state(name) == "provisioning"


def test_installer_fails_calls_back_failed(rack: Rack) -> None:
    name = "lab-r01-u04"
    provision(rack, name)
    rack.wait_for_events(name, ["callback-failed"])
    kinds = rack.kinds(name)
    assert "callback-started" in kinds
    assert "callback-done" not in kinds
    failed = next(e for e in rack.events(name) if e["kind"] == "callback-failed")
    assert "installer-fails" in failed["message"]
    assert rack.status(name)["state"] == "installer-failed"
    poll(lambda: rack.state(name) == "failed", 30, lambda: rack.state(name))


def test_boot_hang_sends_nothing(rack: Rack) -> None:
    name = "lab-r01-u05"
    provision(rack, name)
    status = rack.wait_for_machine(name, "hung")
    assert status["power"] == "on"
    time.sleep(1.5)
    assert not [k for k in rack.kinds(name) if k.startswith(("boot-t", "boot-i", "callback"))]
    # The fault lifted at run time, a network boot (over IPMI: the service refuses
    # boot changes in the middle of its own) gets the machine into the installer the
    # service is still waiting for.
    subprocess.run(
        [
            BIN / "provisioner-lab",
            "fault",
            name,
            "none",
            "--control-dir",
            str(rack.lab.control_dir),
        ],
        check=True,
        capture_output=True,
    )
    assert rack.status(name)["fault"] == "none"
    command = rack.ipmi(name)
    command.set_bootdev("network")
    command.set_power("boot")
    rack.wait_for_events(name, BOOT_HOPS + CALLBACKS)
    rack.wait_for_machine(name, "os-running")


def test_api_boot_device_and_power_on_boot_a_ready_machine(rack: Rack) -> None:
    """A node that is only ready: the service's script tells it to boot its disk, which
    holds nothing yet; the one-time network request is consumed."""
    name = "lab-r01-u06"
    api = rack.service.api
    wanted = {"device": "network", "persistent": False, "uefi": False}
    assert api.put(f"/api/v1/nodes/{name}/boot-device", json=wanted).status_code == 200
    assert api.post(f"/api/v1/nodes/{name}/actions/power-on").status_code == 202
    status = rack.wait_for_machine(name, "no-bootable-disk")
    assert status["boots"][-1] == "pxe"
    assert status["boot"]["valid"] is False
    assert "sanboot" in status["last_hop"]
    rack.wait_for_events(name, ["boot-tftp", "boot-ipxe"])
    shown = subprocess.run(
        [BIN / "provisioner-lab", "status", "--control-dir", str(rack.lab.control_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(shown)[name]["state"] == "no-bootable-disk"


def test_an_unknown_machine_is_discovered(rack: Rack) -> None:
    command = rack.ipmi(UNENROLLED)
    command.set_bootdev("network")
    command.set_power("on")
    mac = next(
        row["macs"].split()[0]
        for row in csv.DictReader(rack.lab.manifest.open())
        if row["name"] == UNENROLLED
    )

    def discovered() -> list[dict[str, Any]]:
        items = rack.service.api.get("/api/v1/nodes", params={"state": "discovered"}).json()
        return [n for n in items["items"] if mac in json.dumps(n)]

    found = poll(discovered, 30, lambda: rack.status(UNENROLLED))
    assert len(found) == 1
    rack.wait_for_machine(UNENROLLED, "no-bootable-disk")
