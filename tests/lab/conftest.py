"""A running lab for the tests: `provisioner-lab up` in a subprocess on free loopback
ports, torn down after the module. Clients are the real ones: Debian's ipmitool and
pyghmi's Command.

For end-to-end tests, :func:`site` adds a real `provisioner serve` (:class:`Served`,
which can be killed and started again) that the lab's machines network-boot from, and
:class:`Site` the questions a test asks of both, with failure messages that show the
offending nodes' states, last errors and timelines."""

from __future__ import annotations

import csv
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import control, faults
from provisioner.bmc import pyghmi_fixes
from tests.agent.fixtures import need
from tests.serving import Served, poll

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"


def need_vm_lab(*programs: str) -> None:
    """What a lab of QEMU VMs on a network namespace needs: its programs, and root."""
    need("qemu-system-x86_64", "ip", "dnsmasq", *programs)
    if os.geteuid() != 0:
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but this needs root for network namespaces")
        pytest.skip("needs root for network namespaces")


PASSWORD = "lab-secret"


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    username: str
    password: str


class Lab:
    def __init__(self, tmp: Path, nodes: int, *extra: str) -> None:
        self.base_port = free_port_block(nodes)
        self.manifest = tmp / "manifest.csv"
        self.control_dir = tmp / "control"
        command = [
            sys.executable,
            "-m",
            "lab.cli",
            "up",
            "--nodes",
            str(nodes),
            "--base-port",
            str(self.base_port),
            "--manifest",
            str(self.manifest),
            "--control-dir",
            str(self.control_dir),
            "--seed",
            "7",
            *extra,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.summary = self.wait_for("lab up:", timeout=30)
        with self.manifest.open() as rows:
            self.nodes = [
                Node(r["name"], int(r["bmc_port"]), r["bmc_username"], r["bmc_password"])
                for r in csv.DictReader(rows)
            ]
        self._unused = iter(self.nodes)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if not self._reader.is_alive() and self.lines.empty():
                    break  # the lab exited and all it printed has been read
                continue
            self.output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} from the lab; output:\n" + "\n".join(self.output))

    def take(self) -> Node:
        """A node no other test has used: tests change power and boot state."""
        return next(self._unused)

    def fault(self, node: Node, fault: str) -> None:
        control.set_fault(self.control_dir, node.name, faults.parse_fault(fault))

    def status(self, node: Node) -> dict[str, object]:
        result: dict[str, object] = control.status(self.control_dir)[node.name]
        return result

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(timeout=5)
            while not self.lines.empty():
                self.output.append(self.lines.get())


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 for UDP (IPMI) and TCP
    (Redfish), below Linux's ephemeral range (32768-60999), where any client's
    connection could take one between this check and the lab's bind."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32768 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    sockets.append(sock)
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(tmp_path_factory.mktemp("lab"), 32, "--password", PASSWORD)
    yield running
    code = running.stop()
    assert code == 0, f"the lab exited with {code}:\n" + "\n".join(running.output)
    assert running.output[-1] == "lab stopped", "\n".join(running.output)


@pytest.fixture(autouse=True, scope="session")
def _pyghmi_fixed() -> None:
    """pyghmi's client in these tests runs on the I/O layer the service and the lab run
    on (trap 2 would otherwise stall its calls), whichever test in the process installed
    it first."""
    pyghmi_fixes.install()


def ipmitool_path() -> str:
    path = shutil.which("ipmitool")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but ipmitool is not installed")
        pytest.skip("ipmitool is not installed (apt-get install ipmitool)")
    return path


def ipmitool(
    node: Node, *args: str, timeout: float = 20, check: bool = True, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [
        ipmitool_path(),
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        str(node.port),
        "-U",
        node.username,
        "-P",
        node.password,
        *extra,
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


# --- a real service with a lab rack that boots from it (tests/lab/test_e2e.py) ---------

TINY_IMAGE = {
    "name": "tiny",
    "os_family": "rhel",
    "version": "9",
    "kernel_url": "tiny/vmlinuz",
    "initrd_url": "tiny/initrd.img",
    "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
    "answer_template": "kickstart",
}


class Site:
    """A service and a lab whose machines boot from it (DHCP's answers given to the lab
    on its command line), and what a test asks of them: node states, timelines, and an
    explanation of any node that is not where it should be."""

    def __init__(self, service: Served, lab: Lab) -> None:
        self.service = service
        self.lab = lab

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.lab.nodes]

    def import_manifest(self, path: Path | None = None) -> None:
        manifest = path or self.lab.manifest
        response = self.service.api.post(
            "/api/v1/racks/import",
            content=manifest.read_bytes(),
            headers={"Content-Type": "text/csv"},
            timeout=120,
        )
        assert response.status_code == 201, response.text

    def nodes(self) -> dict[str, dict[str, Any]]:
        response = self.service.api.get("/api/v1/nodes", params={"limit": 1000})
        response.raise_for_status()
        return {n["name"]: n for n in response.json()["items"]}

    def node(self, name: str) -> dict[str, Any]:
        response = self.service.api.get(f"/api/v1/nodes/{name}")
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        response = self.service.api.get(f"/api/v1/nodes/{name}/events")
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()
        return events

    def machine(self, name: str) -> dict[str, Any]:
        """The lab's view of the machine (``provisioner-lab status``)."""
        status: dict[str, Any] = control.status(self.lab.control_dir).get(name, {})
        return status

    def explain(self, names: Iterable[str], tail: int = 8) -> str:
        """Each node's state, last error, machine state and the tail of its timeline."""
        try:
            current = self.nodes()
        except httpx.HTTPError as exc:
            return f"(the service does not answer: {exc!r})\n{self.service.log_tail()}"
        out = []
        for name in names:
            node = current.get(name)
            if node is None:
                out.append(f"{name}: not a node of the service")
                continue
            machine = self.machine(name)
            out.append(
                f"{name}: {node['state']}, last_error={node['last_error']!r}, machine "
                f"{machine.get('state')!r} ({machine.get('last_hop')!r})"
            )
            for event in self.events(name)[-tail:]:
                moved = f" {event['from_state']}->{event['to_state']}" if event["to_state"] else ""
                out.append(f"    {event['time']} {event['kind']}{moved}: {event['message']}")
        return "\n".join(out)

    def wait_for(self, names: list[str], state: str, timeout: float) -> dict[str, dict[str, Any]]:
        """Until every one of ``names`` is in ``state``; a node that fails on the way
        (unless ``failed`` is wanted) ends the wait at once."""

        def check() -> dict[str, dict[str, Any]] | None:
            current = self.nodes()
            failed = [n for n in names if current[n]["state"] == "failed"]
            if failed and state != "failed":
                raise AssertionError(
                    f"expected {state}, but {len(failed)} node(s) failed:\n" + self.explain(failed)
                )
            if all(current[n]["state"] == state for n in names):
                return current
            return None

        def what() -> str:
            current = self.nodes()
            behind = [n for n in names if current[n]["state"] != state]
            return f"expected every node {state}; these are not:\n" + self.explain(behind)

        found: dict[str, dict[str, Any]] = poll(check, timeout, what)
        return found


@contextmanager
def site(
    tmp: Path,
    nodes: int,
    *lab_args: str,
    roles: Iterable[dict[str, Any]] = ({"name": "compute", "default_image": "tiny"},),
    install_time: float = 0.2,
    reboot_delay: float = 0.2,
    **settings: str,
) -> Iterator[Site]:
    """A service with the image ``tiny`` and ``roles``, and a lab of ``nodes`` machines
    that network-boot from it (not yet imported: see :meth:`Site.import_manifest`)."""
    service = Served(tmp, **settings)
    lab: Lab | None = None
    try:
        service.create("/api/v1/images", TINY_IMAGE)
        for role in roles:
            service.create("/api/v1/roles", role)
        lab = Lab(
            tmp,
            nodes,
            "--tftp",
            f"127.0.0.1:{service.tftp_port}",
            "--ipxe-url",
            f"{service.url}/boot/bootstrap.ipxe",
            "--install-time",
            str(install_time),
            "--reboot-delay",
            str(reboot_delay),
            *lab_args,
        )
        running = Site(service, lab)
        yield running
    finally:
        try:
            if lab is not None:
                lab.stop()
        finally:
            service.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Tell a test's fixtures whether the test itself failed (``call_failed``): the VM
    tests keep their consoles and logs as artefacts then."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.call_failed = report.failed  # type: ignore[attr-defined]
    return report
