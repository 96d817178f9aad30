"""Lab BMCs in the test's own process, for tests of what the service does with them:
Redfish BMCs over HTTPS (as tests/lab/test_redfish_service.py serves them) and IPMI BMCs
on UDP (as tests/bmc/test_ipmi.py's ``test_lab_*`` do), each on a free port of
127.0.0.1 and in front of an emulated machine of its own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lab import faults
from lab.bmc import LabBmc
from lab.machine import build_machine
from lab.packet_loop import PacketLoop
from lab.redfish.server import RedfishServer
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import make_certificate
from provisioner.bmc import pyghmi_fixes

USER, PASSWORD = "admin", "lab-secret"


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LabBmcs:
    redfish: RedfishServer
    ipmi: PacketLoop
    count: int = 0

    def _machine(self) -> tuple[str, int]:
        self.count += 1
        return f"lab-{self.count:02d}", self.count

    def add_redfish(self) -> RedfishBmc:
        name, index = self._machine()
        machine = build_machine(name, index, 7, [f"52:54:00:cc:00:{index:02x}"])
        bmc = RedfishBmc(
            machine,
            USER,
            PASSWORD,
            faults.FaultGate(7, name),
            address="127.0.0.1",
            port=free_port(),
        )
        self.redfish.add(bmc)
        return bmc

    def add_ipmi(self) -> LabBmc:
        name, index = self._machine()
        machine = build_machine(name, index, 7, [f"52:54:00:dd:00:{index:02x}"])
        gate = faults.FaultGate(7, name)
        bmc = LabBmc(
            machine, USER, PASSWORD, gate, self.ipmi, "127.0.0.1", free_port(socket.SOCK_DGRAM)
        )
        self.ipmi.bmcs.append(bmc)
        return bmc


_ipmi_loop: PacketLoop | None = None


def _packet_loop() -> PacketLoop:
    """One for the process, never stopped: pyghmi's I/O is process-wide, and a second
    loop beside (or after) the first loses packets to it."""
    global _ipmi_loop
    # The I/O fixes first, as in the lab and the service: no BMC socket may meet
    # pyghmi's stock send.
    pyghmi_fixes.install()
    if _ipmi_loop is None:
        _ipmi_loop = PacketLoop()
        threading.Thread(target=_ipmi_loop.run, name="lab-ipmi-bmcs", daemon=True).start()
    return _ipmi_loop


@contextmanager
def lab_bmcs() -> Iterator[LabBmcs]:
    redfish = RedfishServer(make_certificate("127.0.0.1"))
    redfish.start()
    loop = _packet_loop()
    bmcs = LabBmcs(redfish, loop)
    try:
        yield bmcs
    finally:
        # IPMI BMCs stay in the loop, as tests/bmc/test_ipmi.py's do: closing one under
        # the running loop leaves the BMCs added after it unanswered.
        redfish.close()
