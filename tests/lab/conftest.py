"""A running lab for the tests: `provisioner-lab up` in a subprocess on free loopback
ports, torn down after the module. Clients are the real ones: Debian's ipmitool and
pyghmi's Command."""

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyghmi.ipmi.private.session as pyghmi_session
import pytest

from lab import control, faults
from lab.bmc import _send_without_mode_change

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
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
    """The first of ``count`` consecutive UDP ports free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 60000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free UDP ports")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(tmp_path_factory.mktemp("lab"), 32, "--password", PASSWORD)
    yield running
    code = running.stop()
    assert code == 0, f"the lab exited with {code}:\n" + "\n".join(running.output)
    assert running.output[-1] == "lab stopped", "\n".join(running.output)


@pytest.fixture(autouse=True, scope="module")
def _client_send_fix() -> Iterator[None]:
    """The client half of trap 2: pyghmi's send flips its socket to blocking under the
    I/O thread's feet, which stalls calls; the service's driver does the same swap."""
    original = pyghmi_session._io_sendto
    pyghmi_session._io_sendto = _send_without_mode_change
    yield
    pyghmi_session._io_sendto = original


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
