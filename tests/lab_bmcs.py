"""Lab BMCs in the test's own process, for tests of the lab's BMCs and of what the
service does with them: Redfish BMCs over HTTPS (tests/lab/test_redfish_service.py,
tests/bmc/test_redfish.py) and IPMI BMCs on UDP (as tests/bmc/test_ipmi.py's
``test_lab_*`` do), each on a free port of 127.0.0.1 and in front of an emulated machine
of its own."""

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
from lab.redfish.dialects import Dialect
from lab.redfish.server import RedfishServer
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import Certificate, make_certificate
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
    certificate: Certificate  # the one ``redfish`` serves
    ipmi: PacketLoop | None  # None: Redfish only, no IPMI loop started
    password: str = PASSWORD
    count: int = 0

    def _machine(self) -> tuple[str, int]:
        self.count += 1
        return f"lab-{self.count:02d}", self.count

    def add_redfish(
        self,
        dialect: Dialect = Dialect.GENERIC,
        *,
        session_timeout: float = 60.0,
        nics: int = 1,
        server: RedfishServer | None = None,
    ) -> RedfishBmc:
        """A Redfish BMC served by ``server`` (``redfish`` unless told), its machine with
        ``nics`` NICs: more than one shows which one is the PXE NIC."""
        name, index = self._machine()
        macs = [f"52:54:00:cc:{nic:02x}:{index:02x}" for nic in range(nics)]
        bmc = RedfishBmc(
            build_machine(name, index, 7, macs),
            USER,
            self.password,
            faults.FaultGate(7, name),
            address="127.0.0.1",
            port=free_port(),
            dialect=dialect,
            session_timeout=session_timeout,
        )
        (server or self.redfish).add(bmc)
        return bmc

    def add_ipmi(self) -> LabBmc:
        if self.ipmi is None:
            raise RuntimeError("these lab BMCs were made without IPMI (lab_bmcs(ipmi=False))")
        name, index = self._machine()
        machine = build_machine(name, index, 7, [f"52:54:00:dd:00:{index:02x}"])
        gate = faults.FaultGate(7, name)
        bmc = LabBmc(
            machine, USER, self.password, gate, self.ipmi, "127.0.0.1", free_port(socket.SOCK_DGRAM)
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
def lab_bmcs(*, ipmi: bool = True, password: str = PASSWORD) -> Iterator[LabBmcs]:
    """Lab BMCs whose password is ``password``; with ``ipmi=False`` Redfish ones only,
    and pyghmi's process-wide I/O left alone."""
    certificate = make_certificate("127.0.0.1")
    redfish = RedfishServer(certificate)
    redfish.start()
    loop = _packet_loop() if ipmi else None
    bmcs = LabBmcs(redfish, certificate, loop, password)
    try:
        yield bmcs
    finally:
        # IPMI BMCs stay in the loop, as tests/bmc/test_ipmi.py's do: closing one under
        # the running loop leaves the BMCs added after it unanswered.
        redfish.close()
