"""The machine's side of the deploy agent, played by a test the way ``init.sh`` speaks:
network boot from its own address (``/boot/ipxe``), its kernel fetched with the token,
then the inventory, heartbeats, results and downloads under ``/agent/{token}/...``.
The service side is the real app with the real agent build in its data directory, fake
BMCs and the reconciler ticked by the test (tests/flows.py)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from provisioner.agent import build
from provisioner.app import create_app
from provisioner.bmc.base import BootDevice
from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.models import Deployment, Node
from provisioner.settings import Settings
from tests import flows
from tests.test_reconciler import PASSWORD

GB = 10**9
BASE = "http://testserver"
IMAGE_BYTES = 3 * 2**20 + 4321  # not a whole MiB: the agent reads back exactly this many
VENDOR, PRODUCT = "Acme Compute", "AC-200"

# Matched by what the machine says from the inside only: the fake BMCs say "Fake
# Systems" / "FS-1000", which nothing in this directory matches.
PROFILE = f"""\
name: acme-ac200
description: Acme AC-200, known by its in-band DMI strings
priority: 100
match:
  vendor: ["^{VENDOR}$"]
  product: ["^{PRODUCT}$"]
boot_mode: bios
console:
  port: ttyS1
  speed: 115200
root_disk:
  hint: smallest
  size_gb_min: 100
"""


def install_build(agent: build.Agent, data_dir: Path) -> None:
    """Make ``agent`` the build of ``data_dir``, as `provisioner agent build` leaves it."""
    shutil.copytree(agent.directory, data_dir / "agent" / agent.key)
    (data_dir / "agent" / "current").write_text(agent.key + "\n")


def make_app(
    tmp_path: Path, database_url: str, fleet: FakeFleet, agent: build.Agent, **overrides: Any
) -> FastAPI:
    """The app with the agent built and the Acme profile as the only hardware profile."""
    data_dir = tmp_path / "data"
    install_build(agent, data_dir)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "acme-ac200.yaml").write_text(PROFILE)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        reconciler=False,
        power_on_rate=1000,
        profiles_dir=profiles,
        **overrides,
    )
    assert build.current(settings.resolved_agent_dir) is not None
    return create_app(settings, driver_factory=fleet.driver)


def mac_of(n: int, nic: int = 0) -> str:
    return f"52:54:00:00:{0x97 - nic:02x}:{n:02x}"


def enroll(
    client: TestClient, headers: dict[str, str], fleet: FakeFleet, name: str, n: int
) -> FakeBmc:
    address = f"192.0.2.{n}"
    fake = fleet.add(address, users={"admin": PASSWORD})
    body = {
        "name": name,
        "rack": "r01",
        "bmc": {"address": address, "username": "admin", "password": PASSWORD},
        "nics": [{"mac": mac_of(n), "pxe": True}],
    }
    response = client.post("/api/v1/nodes", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return fake


def disk(name: str, gb: int, serial: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "size_bytes": gb * GB,
        "model": "QEMU HARDDISK",
        "serial": serial or f"SN-{name.upper()}",
        "rotational": False,
        "wwn": "",
    }


def inventory(n: int, disks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What init.sh posts for machine ``n``: DMI, CPUs, memory, boot mode, its disks (by
    default a 16 GB, a 240 GB and a 480 GB one) and two NICs, the second one unknown to
    the service."""
    return {
        "system": {
            "vendor": VENDOR,
            "product": PRODUCT,
            "serial": f"ACME-{n:04d}",
            "uuid": f"6c1d3a2e-0000-4000-8000-{n:012x}",
            "bios_vendor": "Acme BIOS",
            "bios_version": "2.14.1",
            "bios_date": "03/07/2025",
        },
        "cpu": {"count": 16, "model": "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz"},
        "memory_bytes": 64 * 2**30,
        "boot_mode": "bios",
        "disks": disks
        if disks is not None
        else [disk("vda", 16), disk("vdb", 240), disk("vdc", 480)],
        "nics": [
            {"name": "eth0", "mac": mac_of(n), "driver": "igb", "link": True, "booted": True},
            {"name": "eth1", "mac": mac_of(n, 1), "driver": "igb", "link": False, "booted": False},
        ],
    }


@dataclass(frozen=True)
class Image:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def add_image(
    client: TestClient, headers: dict[str, str], tmp_path: Path, name: str, size: int
) -> Image:
    """A raw disk image of ``size`` random bytes, in the catalog as ``deploy: image``."""
    data = random.Random(name).randbytes(size)
    path = tmp_path / f"{name}.raw"
    path.write_bytes(data)
    image = Image(name, data)
    body = {
        "name": name,
        "deploy": "image",
        "os_family": "other",
        "version": "1",
        "image_url": f"file://{path}",
        "checksum": f"sha256:{image.sha256}",
        "format": "raw",
    }
    response = client.post("/api/v1/images", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return image


def add_role(client: TestClient, headers: dict[str, str], name: str, image: str) -> None:
    role = {"name": name, "default_image": image}
    response = client.post("/api/v1/roles", json=role, headers=headers)
    assert response.status_code == 201, response.text


class Agent:
    """One boot of the deploy agent on a machine: its HTTP requests, from its address."""

    def __init__(self, own: TestClient, token: str) -> None:
        self.http = own
        self.token = token

    def post(self, what: str, body: Any, token: str | None = None) -> httpx2.Response:
        return self.http.post(
            f"/agent/{token or self.token}/{what}",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )

    def inventory(self, found: dict[str, Any]) -> None:
        response = self.post("inventory", found)
        assert response.status_code == 200, response.text

    def heartbeat(self, busy: str = "") -> str:
        response = self.post("heartbeat", {"busy": busy})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        lines = response.text.splitlines()
        assert len(lines) == 1, response.text
        return lines[0]

    def result(self, body: dict[str, Any]) -> None:
        response = self.post("result", body)
        assert response.status_code == 200, response.text

    def image(self) -> bytes:
        response = self.http.get(f"/agent/{self.token}/image")
        assert response.status_code == 200, response.text
        return response.content

    def config_drive(self) -> dict[str, bytes]:
        """The config drive's files, by path in the tar."""
        response = self.http.get(f"/agent/{self.token}/config-drive")
        assert response.status_code == 200, response.text
        files = {}
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                assert extracted is not None, member.name
                files[member.name] = extracted.read()
        return files

    def written(self, command: str, seconds: float = 3.0) -> dict[str, Any]:
        """The result of carrying out ``deploy DISK FORMAT BYTES SHA256`` as told."""
        _, target, _, size, digest = command.split()
        return {
            "command": "deploy",
            "ok": True,
            "disk": target,
            "bytes": int(size),
            "sha256": digest,
            "seconds": seconds,
            "message": "",
        }


_TOKEN = re.compile(r"provisioner\.token=([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Boot:
    script: str
    token: str


def netboot(client: TestClient, mac: str, address: str) -> Boot:
    """The machine asks for its iPXE script (without waiting for a power-on)."""
    with flows.machine(client, address) as own:
        script = own.get("/boot/ipxe", params={"mac": mac}).text
    found = _TOKEN.search(script)
    assert found, script
    return Boot(script, found.group(1))


def powered_and_booted(
    client: TestClient, headers: dict[str, str], name: str, mac: str, address: str
) -> Boot:
    """Wait for the reconciler to power the machine on for its deployment, then boot it."""
    found = flows.boot(client, headers, name, mac, _TOKEN.pattern, address)
    return Boot(found.string, found.group(1))


@contextmanager
def running(client: TestClient, address: str, token: str) -> Iterator[Agent]:
    with flows.machine(client, address) as own:
        yield Agent(own, token)


def address_of(n: int) -> str:
    return f"10.20.0.{n}"


def inspect_by_agent(
    client: TestClient, headers: dict[str, str], name: str, n: int, found: dict[str, Any]
) -> Boot:
    """Carry a node's inspection (already asked for) through the agent to ``ready``."""
    booted = powered_and_booted(client, headers, name, mac_of(n), address_of(n))
    with running(client, address_of(n), booted.token) as agent:
        agent.inventory(found)
        assert agent.heartbeat() == "poweroff"
    flows.tick_until(client, headers, name, "ready")
    return booted


def deploy_by_agent(
    client: TestClient, headers: dict[str, str], name: str, n: int, found: dict[str, Any]
) -> tuple[Boot, str]:
    """Be the agent of a provisioning or reimaging node up to the written image: boot,
    report, take the deploy command, fetch the image and config drive, report success.
    The boot and the command."""
    booted = powered_and_booted(client, headers, name, mac_of(n), address_of(n))
    with running(client, address_of(n), booted.token) as agent:
        agent.inventory(found)
        command = agent.heartbeat()
        assert command.startswith("deploy "), command
        agent.image()
        agent.config_drive()
        assert agent.heartbeat("deploy").startswith("wait ")
        agent.result(agent.written(command))
    return booted, command


def newest_deployment(app: FastAPI, name: str) -> Deployment:
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node).where(col(Node.name) == name)).one()
        found = session.exec(
            select(Deployment)
            .where(col(Deployment.node_id) == node.id)
            .order_by(col(Deployment.created_at).desc())
        ).first()
        assert found is not None
        return found


# --- the operator's side, through the API ---------------------------------------------


def events(client: TestClient, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/api/v1/nodes/{name}/events", headers=headers).json()
    return found


def messages(client: TestClient, headers: dict[str, str], name: str, kind: str) -> list[str]:
    return [e["message"] for e in events(client, headers, name) if e["kind"] == kind]


def act(client: TestClient, headers: dict[str, str], name: str, action: str, **body: Any) -> None:
    response = client.post(f"/api/v1/nodes/{name}/actions/{action}", json=body, headers=headers)
    assert response.status_code == 202, response.text


def ready(
    client: TestClient,
    headers: dict[str, str],
    fleet: FakeFleet,
    name: str,
    n: int,
    found: dict[str, Any] | None = None,
) -> FakeBmc:
    """Node ``name`` enrolled and inspected by the agent, which saw ``found``."""
    fake = enroll(client, headers, fleet, name, n)
    act(client, headers, name, "inspect")
    inspect_by_agent(client, headers, name, n, found or inventory(n))
    return fake


def catalog(client: TestClient, headers: dict[str, str], tmp_path: Path) -> Image:
    image = add_image(client, headers, tmp_path, "acme-os", IMAGE_BYTES)
    add_role(client, headers, "compute", image.name)
    return image


def first_boot(client: TestClient, headers: dict[str, str], name: str, n: int, token: str) -> None:
    """The written system boots and calls back from its config drive's URL."""
    with flows.machine(client, address_of(n)) as own:
        assert own.post(f"/callback/{token}/done").status_code == 200
    flows.tick_until(client, headers, name, "active")


def active(
    client: TestClient,
    headers: dict[str, str],
    fleet: FakeFleet,
    name: str,
    n: int,
    found: dict[str, Any],
) -> FakeBmc:
    """Node ``name`` inspected, deployed by the agent as role compute, and active."""
    fake = ready(client, headers, fleet, name, n, found)
    act(client, headers, name, "provision", role="compute")
    booted, _ = deploy_by_agent(client, headers, name, n, found)
    flows.tick_until(client, headers, name, lambda: fake.boots[-1] is BootDevice.DISK)
    first_boot(client, headers, name, n, booted.token)
    return fake
