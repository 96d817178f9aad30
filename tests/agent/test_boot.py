"""The agent boots for real: Debian's kernel and the built initramfs run in a QEMU
virtual machine (pure emulation, BIOS and UEFI), find their NIC, get an address by DHCP,
post the machine's inventory as QEMU describes it, and obey the commands the heartbeat
answers, down to powering the machine off.

The VM's network is QEMU's user-mode stack: the guest reaches this host's 127.0.0.1 as
10.0.2.2 and nothing else is listening for it; the agent talks only to the URL on its
kernel command line.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.agent import build
from tests.agent.fixtures import qemu_machine

# Quiet, a boot to power-off takes 15-25 s under emulation; a busy CI machine 2-3x that.
BOOT_DEADLINE = 240


@dataclass
class Service:
    """What the agent talks to: records every post, answers heartbeats in turn."""

    commands: list[str]
    posts: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)


def serve(service: Service) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            service.posts.put((self.path, json.loads(body)))
            answer = b"{}"
            if self.path.endswith("/heartbeat"):
                answer = (service.commands.pop(0) if service.commands else "wait 5").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def service() -> Iterator[tuple[Service, int]]:
    service = Service(commands=["wait 1", "poweroff"])
    server = serve(service)
    try:
        yield service, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def qemu(firmware: str, agent: build.Agent, tmp_path: Path, port: int, vm: uuid.UUID) -> list[str]:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    return [
        *qemu_machine(firmware, tmp_path),
        "-kernel", str(agent.kernel), "-initrd", str(agent.initrd),
        "-append", f"console=ttyS0 provisioner.url=http://10.0.2.2:{port} "
        "provisioner.token=node-token BOOTIF=01-52-54-00-a9-00-01",
        "-netdev", "user,id=n0",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:a9:00:01",
        "-drive", f"file={disk},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,serial=LABDISK1",
        "-uuid", str(vm),
        "-smbios", "type=1,manufacturer=Lab Systems,product=QEMU \"Q\\35\",serial=LAB-0001",
    ]  # fmt: skip


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_the_agent_boots_reports_and_powers_off(
    firmware: str, agent: build.Agent, service: tuple[Service, int], tmp_path: Path
) -> None:
    recorded, port = service
    vm = uuid.uuid4()
    try:
        subprocess.run(qemu(firmware, agent, tmp_path, port, vm), timeout=BOOT_DEADLINE, check=True)
    except subprocess.TimeoutExpired:
        serial = (tmp_path / "serial.log").read_text(errors="replace")
        pytest.fail(f"the VM did not power off in {BOOT_DEADLINE} s; console:\n{serial[-3000:]}")
    posts = []
    while not recorded.posts.empty():
        posts.append(recorded.posts.get())
    assert [path for path, _ in posts] == [
        "/agent/node-token/inventory",
        "/agent/node-token/heartbeat",
        "/agent/node-token/heartbeat",
    ]
    # Idle: no job ran.
    assert [body for _, body in posts[1:]] == [{"busy": ""}, {"busy": ""}]
    inventory = posts[0][1]
    # The SMBIOS strings arrive as QEMU set them, quote and backslash included.
    assert inventory["system"]["vendor"] == "Lab Systems"
    assert inventory["system"]["product"] == 'QEMU "Q\\35"'
    assert inventory["system"]["serial"] == "LAB-0001"
    assert inventory["system"]["uuid"] == str(vm)
    assert inventory["boot_mode"] == firmware
    assert inventory["cpu"]["count"] == 1
    assert 400 * 2**20 < inventory["memory_bytes"] <= 512 * 2**20
    assert inventory["disks"] == [
        {
            "name": "vda",
            "size_bytes": 64 * 2**20,
            "model": "",
            "serial": "LABDISK1",
            "rotational": True,
            "wwn": "",
        }
    ]
    assert inventory["nics"] == [
        {
            "name": "eth0",
            "mac": "52:54:00:a9:00:01",
            "driver": "virtio_net",
            "link": True,
            "booted": True,
        }
    ]
    serial = (tmp_path / "serial.log").read_text(errors="replace")
    assert "provisioner-agent: powering off" in serial
