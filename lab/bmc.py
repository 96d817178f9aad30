"""A virtual BMC: pyghmi's IPMI server in front of an emulated machine.

pyghmi's ``Bmc`` answers power, boot device and Get Device ID; this subclass adds what a
provisioning service reads from real hardware (boot flags with their persistent and
EFI bits, FRU, SDR and sensor readings, system GUID) and fixes the server-side traps of
pyghmi 1.6.19 described in docs/lab.md and docs/pyghmi.md:

1. an open-session request proposing anything but cipher suite 3 is refused with
   status 0x11, so a pyghmi client falls back to suite 3 instead of crashing in RAKP2;
4. an unknown user name is refused at once with RAKP2 status 0x0D instead of silence;
5. every packet is handled inside its own ``try``, and sessions are bounded per BMC and
   expire when idle, so logins cannot grow memory without bound.

Trap 2 (a socket's blocking mode flipped across threads) and the I/O thread's own
fragility are fixed for the whole process by `provisioner.bmc.pyghmi_fixes`, which
`lab.packet_loop.PacketLoop` installs before it runs all the BMCs of a process in one
thread.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as pyghmi_server
import pyghmi.ipmi.private.session as pyghmi_session

from lab import faults
from lab.machine import BootFlags, Machine, SensorSpec
from lab.packet_loop import PacketLoop

# pyghmi is untyped; these names give its classes a type mypy accepts as a base.
_Bmc: Any = pyghmi_bmc.Bmc
_ServerSession: Any = pyghmi_server.ServerSession

# Real BMCs keep a handful of sessions and drop idle ones after about a minute.
MAX_SESSIONS = 32
SESSION_IDLE_SECONDS = 60.0

_RAKP2 = 0x13
# RMCP+ status codes (IPMI 2.0 table 13-15).
_NO_MATCHING_CIPHER_SUITE = 0x11
_UNAUTHORIZED_NAME = 0x0D
# Completion codes (IPMI 2.0 table 5-2).
_OK = 0x00
_PARAMETER_NOT_SUPPORTED = 0x80
_OUT_OF_RANGE = 0xC9
_NOT_PRESENT = 0xCB
_REQUEST_TOO_SHORT = 0xC7

# The IANA enterprise number reserved for documentation (RFC 5612): no pyghmi OEM
# handler claims it, so clients take the standard code paths.
MANUFACTURER_ID = 32473
PRODUCT_ID = 0x0001

# Lower non-critical, lower critical, upper non-critical, upper critical.
_THRESHOLDS = 0x1B
_NETFN_SENSOR = 0x04
_NETFN_STORAGE = 0x0A


class Accounts:
    """The BMC's one user, as pyghmi's ``authdata.get(name)`` reads it; the password
    is looked up per login so that a ``wrong-password`` fault applies at once."""

    def __init__(self, username: str, password: str, gate: faults.FaultGate) -> None:
        self._username = username
        self._password = password
        self._gate = gate

    def get(self, username: str) -> str | None:
        if username != self._username:
            return None
        return self._gate.password(self._password)


class LabSession(_ServerSession):  # type: ignore[misc]
    """One client's RMCP+ session with one BMC."""

    bmc: LabBmc
    last_active: float

    def create_open_session_response(self, request: bytearray) -> bytearray:
        self.last_active = time.monotonic()
        self.clientsessionid = request[4:8]
        # Proposed algorithms (IPMI 2.0 table 13-16): authentication at 12, integrity
        # at 20, confidentiality at 28. Only suite 3 (HMAC-SHA1, HMAC-SHA1-96,
        # AES-CBC-128) is implemented, so refuse anything else instead of pretending.
        if len(request) >= 32 and (request[12], request[20], request[28]) == (1, 1, 1):
            response: bytearray = super().create_open_session_response(request)
            return response
        return bytearray([request[0], _NO_MATCHING_CIPHER_SUITE, 0, 0]) + request[4:8]

    def _got_rmcp_openrequest(self, data: bytearray) -> None:
        # A client that starts over gets a fresh session: the stock code would answer
        # with this session's keys and sequence numbers still set.
        self.bmc.forget(self)
        self.bmc.open_session(self.sockaddr, data)

    def _got_rakp1(self, data: bytearray) -> None:
        name = bytes(data[28 : 28 + data[27]]) if len(data) >= 28 else b""
        if not name or self.authdata.get(name.decode("utf-8", "replace")) is None:
            # The stock server stays silent here; clients then wait for many seconds.
            reply = bytearray([data[0], _UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(reply, _RAKP2, retry=False)
            return
        super()._got_rakp1(data)

    def close_server_session(self) -> None:
        self.bmc.forget(self)

    def process_pktqueue(self) -> None:
        while self.pktqueue:
            self.bmc.receive(self.pktqueue.popleft(), self._handle)

    def _handle(self, packet: tuple[Any, ...]) -> None:
        data = bytearray(packet[0])
        if self.bmc.sessions.get(self.sockaddr) is not self:
            # Queued before this session was closed or replaced.
            self.bmc.sessionless_data(data, packet[1])
            return
        self.last_active = time.monotonic()
        is_ipmi15 = len(data) >= 13 and data[4] in (0, 2)
        if is_ipmi15 and data[5:13] == bytes(8):
            # A new client on a source port an old session still holds. The stock code
            # drops every session of that address, on all BMCs of the process.
            self.bmc.forget(self)
            self.bmc.sessionless_data(data, packet[1])
            return
        self._handle_ipmi_packet(data, sockaddr=packet[1], qent=packet)


class LabBmc(_Bmc):  # type: ignore[misc]
    """A virtual BMC bound to one UDP port, answering for one `Machine`."""

    def __init__(
        self,
        machine: Machine,
        username: str,
        password: str,
        gate: faults.FaultGate,
        loop: PacketLoop,
        address: str,
        port: int,
        session_timeout: float = SESSION_IDLE_SECONDS,
    ) -> None:
        super().__init__(
            Accounts(username, password, gate),
            port=port,
            bmcuuid=machine.uuid,
            address=address,
        )
        self.machine = machine
        self.gate = gate
        self.loop = loop
        self.sessions: dict[Any, LabSession] = {}
        self.session_timeout = session_timeout
        self.deviceid = 0x20
        self.revision = 0x01
        self.firmwaremajor = 2
        self.firmwareminor = 0x47  # BCD: firmware 2.47
        self.mfgid = MANUFACTURER_ID
        self.prodid = PRODUCT_ID
        # Chassis, FRU inventory, SDR repository and sensor devices.
        self.additionaldevices = 0x8B
        self._fru = machine.fru_image()
        self._sdrs = [_full_sensor_record(i + 1, s) for i, s in enumerate(machine.sensors)]
        self._boot_progress = 0  # boot options parameter 0, "set in progress"
        self._boot_clearing = 0  # parameter 3, "BMC boot flag valid bit clearing"

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self.forget(session)
        pyghmi_session.Session.bmc_handlers.pop(self.serversocket, None)
        # Out of the I/O thread's select() list first: select() on a closed socket
        # raises, and would end that thread with a traceback.
        with contextlib.suppress(ValueError):
            pyghmi_session.iosockets.remove(self.serversocket)
        self.serversocket.close()

    # --- packets and sessions ----------------------------------------------------

    def receive(self, packet: tuple[Any, ...], handle: Callable[[tuple[Any, ...]], None]) -> None:
        """Every packet for this BMC passes here: the fault decides whether it is
        handled now, later, or never."""
        verdict = self.gate.verdict()
        if verdict == faults.DROP:
            return
        if verdict > 0:
            self.loop.call_later(verdict, lambda: self.loop.contain(handle, packet))
            return
        self.loop.contain(handle, packet)

    def process_pktqueue(self) -> None:
        while self.pktqueue:
            self.receive(self.pktqueue.popleft(), self._handle_sessionless)

    def _handle_sessionless(self, packet: tuple[Any, ...]) -> None:
        self.sessionless_data(bytearray(packet[0]), packet[1])

    def sessionless_data(self, data: bytearray, sockaddr: Any) -> None:
        if len(data) < 22 or data[0] != 6 or data[2:4] != b"\xff\x07":
            return
        if data[4] == 6:
            if data[5] == 0x10:
                self.open_session(sockaddr, data[16:])
                return
            if data[6:10] != bytes(4):
                return  # a packet of a session this BMC no longer has
        super().sessionless_data(data, sockaddr)

    def open_session(self, sockaddr: Any, request: bytearray) -> None:
        if len(request) < 8:
            return
        if len(self.sessions) >= MAX_SESSIONS:
            self.forget(min(self.sessions.values(), key=lambda s: s.last_active))
        # pyghmi's constructor registers the session for the client's address and
        # sends the open-session response.
        self.sessions[sockaddr] = LabSession(
            self.authdata, self.kg, sockaddr, self.serversocket, request, self.uuid, bmc=self
        )

    def forget(self, session: LabSession) -> None:
        if self.sessions.get(session.sockaddr) is session:
            del self.sessions[session.sockaddr]
        handlers = pyghmi_session.Session.bmc_handlers
        ports = handlers.get(session.sockaddr)
        if ports is not None and ports.get(self.port) is session:
            del ports[self.port]
            if not ports:
                handlers.pop(session.sockaddr, None)

    def expire_sessions(self, now: float) -> None:
        for session in list(self.sessions.values()):
            if now - session.last_active > self.session_timeout:
                self.forget(session)

    def send_device_id(self, session: LabSession) -> None:
        # The stock answer packs the manufacturer in 4 bytes instead of 3, which
        # shifts the product id.
        session.send_ipmi_response(
            data=[
                self.deviceid,
                self.revision,
                self.firmwaremajor,
                self.firmwareminor,
                self.ipmiversion,
                self.additionaldevices,
                *struct.pack("<I", self.mfgid)[:3],
                *struct.pack("<H", self.prodid),
            ]
        )

    # --- chassis ------------------------------------------------------------------

    def get_power_state(self) -> str:
        return self.machine.power_state()

    def power_on(self) -> int:
        return self.machine.press_power_on()

    def power_off(self) -> int:
        return self.machine.press_power_off()

    def power_cycle(self) -> int:
        return self.machine.power_cycle()

    def power_reset(self) -> int:
        return self.machine.hard_reset()

    def power_shutdown(self) -> int:
        return self.machine.soft_off()

    def pulse_diag(self) -> int:
        return self.machine.diagnostic_interrupt()

    def get_system_guid(self) -> uuid.UUID:
        return self.machine.uuid

    def get_system_boot_options(self, request: dict[str, Any], session: LabSession) -> None:
        data = request["data"]
        if not data:
            session.send_ipmi_response(code=_REQUEST_TOO_SHORT)
            return
        parameter = data[0] & 0x7F
        if parameter == 0:
            values = [self._boot_progress]
        elif parameter == 3:
            values = [self._boot_clearing]
        elif parameter == 4:
            values = [0, 0]
        elif parameter == 5:
            values = _boot_flags_bytes(self.machine.boot)
        else:
            session.send_ipmi_response(code=_PARAMETER_NOT_SUPPORTED)
            return
        # Parameter version 1, then the selector with bit 7 clear: valid and unlocked.
        session.send_ipmi_response(data=[1, parameter, *values])

    def set_system_boot_options(self, request: dict[str, Any], session: LabSession) -> None:
        data = request["data"]
        if not data:
            session.send_ipmi_response(code=_REQUEST_TOO_SHORT)
            return
        parameter = data[0] & 0x7F
        code = _OK
        if parameter in (0, 3) and len(data) < 2:
            code = _REQUEST_TOO_SHORT
        elif parameter == 0:
            self._boot_progress = data[1] & 0x03
        elif parameter == 3:
            self._boot_clearing = data[1] & 0x1F
        elif parameter == 5:
            if len(data) < 3:
                code = _REQUEST_TOO_SHORT
            else:
                self.machine.set_boot_flags(
                    BootFlags(
                        valid=bool(data[1] & 0x80),
                        persistent=bool(data[1] & 0x40),
                        uefi=bool(data[1] & 0x20),
                        device=(data[2] >> 2) & 0x0F,
                    )
                )
        elif parameter != 4:  # 4, boot info acknowledge, needs no state here
            code = _PARAMETER_NOT_SUPPORTED
        session.send_ipmi_response(code=code)

    # --- FRU, SDR, sensors --------------------------------------------------------

    def handle_raw_request(self, request: dict[str, Any], session: LabSession) -> None:
        netfn, command, data = request["netfn"], request["command"], request["data"]
        handler = _HANDLERS.get((netfn, command))
        if handler is None:
            super().handle_raw_request(request, session)
            return
        code, payload = handler(self, bytes(data))
        session.send_ipmi_response(data=payload, code=code)

    def _fru_area_info(self, data: bytes) -> tuple[int, list[int]]:
        if len(data) < 1:
            return _REQUEST_TOO_SHORT, []
        if data[0] != 0:
            return _NOT_PRESENT, []
        return _OK, [*struct.pack("<H", len(self._fru)), 0x00]  # accessed by bytes

    def _fru_read(self, data: bytes) -> tuple[int, list[int]]:
        if len(data) < 4:
            return _REQUEST_TOO_SHORT, []
        if data[0] != 0:
            return _NOT_PRESENT, []
        offset = data[1] | data[2] << 8
        if offset >= len(self._fru):
            return _OUT_OF_RANGE, []
        chunk = self._fru[offset : offset + data[3]]
        return _OK, [len(chunk), *chunk]

    def _sdr_repository_info(self, data: bytes) -> tuple[int, list[int]]:
        never = [0, 0, 0, 0]  # add/erase timestamps: the repository never changes
        # Version 1.5, record count, free space (none), timestamps, operations:
        # "reserve supported", nothing else.
        return _OK, [0x51, *struct.pack("<H", len(self._sdrs)), 0, 0, *never, *never, 0x02]

    def _sdr_reserve(self, data: bytes) -> tuple[int, list[int]]:
        # One reservation forever: the repository is read-only, so no reader can be
        # invalidated by a change while it reads a record in pieces.
        return _OK, [0x01, 0x00]

    def _sdr_get(self, data: bytes) -> tuple[int, list[int]]:
        if len(data) < 6:
            return _REQUEST_TOO_SHORT, []
        record_id = data[2] | data[3] << 8
        offset, count = data[4], data[5]
        if record_id == 0:  # 0000h: the first record
            record_id = 1
        if not 1 <= record_id <= len(self._sdrs):
            return _NOT_PRESENT, []
        record = self._sdrs[record_id - 1]
        if offset > len(record):
            return _OUT_OF_RANGE, []
        following = record_id + 1 if record_id < len(self._sdrs) else 0xFFFF
        chunk = record[offset:] if count == 0xFF else record[offset : offset + count]
        return _OK, [*struct.pack("<H", following), *chunk]

    def _sensor(self, data: bytes) -> SensorSpec | None:
        return next((s for s in self.machine.sensors if data and s.number == data[0]), None)

    def _sensor_thresholds(self, data: bytes) -> tuple[int, list[int]]:
        spec = self._sensor(data)
        if spec is None:
            return _NOT_PRESENT, []
        lower = [spec.raw(spec.lower_noncritical), spec.raw(spec.lower_critical), 0]
        upper = [spec.raw(spec.upper_noncritical), spec.raw(spec.upper_critical), 0]
        return _OK, [_THRESHOLDS, *lower, *upper]

    def _sensor_reading(self, data: bytes) -> tuple[int, list[int]]:
        spec = self._sensor(data)
        if spec is None:
            return _NOT_PRESENT, []
        value = self.machine.reading(spec)
        if value is None:
            # Scanning enabled, "reading unavailable": no standby power to this sensor.
            return _OK, [0, 0x60, 0]
        status = 0
        if value <= spec.lower_noncritical:
            status |= 0x01
        if value <= spec.lower_critical:
            status |= 0x02
        if value >= spec.upper_noncritical:
            status |= 0x08
        if value >= spec.upper_critical:
            status |= 0x10
        # Event messages and scanning enabled.
        return _OK, [spec.raw(value), 0xC0, status]


_Handler = Callable[[LabBmc, bytes], tuple[int, list[int]]]
_HANDLERS: dict[tuple[int, int], _Handler] = {
    (_NETFN_STORAGE, 0x10): LabBmc._fru_area_info,
    (_NETFN_STORAGE, 0x11): LabBmc._fru_read,
    (_NETFN_STORAGE, 0x20): LabBmc._sdr_repository_info,
    (_NETFN_STORAGE, 0x22): LabBmc._sdr_reserve,
    (_NETFN_STORAGE, 0x23): LabBmc._sdr_get,
    (_NETFN_SENSOR, 0x27): LabBmc._sensor_thresholds,
    (_NETFN_SENSOR, 0x2D): LabBmc._sensor_reading,
}


def _boot_flags_bytes(flags: BootFlags) -> list[int]:
    first = flags.valid << 7 | flags.persistent << 6 | flags.uefi << 5
    return [first, (flags.device & 0x0F) << 2, 0, 0, 0]


def _full_sensor_record(record_id: int, spec: SensorSpec) -> bytes:
    """A Full Sensor Record (IPMI 2.0 table 43-1) for a threshold sensor with the
    linear conversion y = M * x * 10**R."""
    name = spec.name.encode("ascii")
    m = spec.m & 0x3FF
    upper = [0x00, spec.raw(spec.upper_critical), spec.raw(spec.upper_noncritical)]
    lower = [0x00, spec.raw(spec.lower_critical), spec.raw(spec.lower_noncritical)]
    fields = [
        [0x20, 0x00, spec.number],  # owner: the BMC, LUN 0; sensor number
        [spec.entity, 0x01],  # entity id and instance
        [0x7F],  # initialization: scanning, events, thresholds, hysteresis, type
        [0x44],  # capabilities: auto re-arm, thresholds readable from this record
        [spec.sensor_type, 0x01],  # event/reading type 01h: threshold
        [0x00, 0x30],  # no events; lower (non-)critical comparisons returned
        [0x00, 0x30],  # no events; upper (non-)critical comparisons returned
        [_THRESHOLDS, 0x00],  # readable thresholds; none settable
        [0x00, spec.unit, 0x00],  # unsigned, no rate; base unit; no modifier unit
        [0x00],  # linear
        [m & 0xFF, (m >> 8) << 6],  # M; tolerance 0
        [0x00, 0x00, 0x00],  # B = 0; accuracy 0; direction unspecified
        [(spec.exponent & 0x0F) << 4],  # R (result exponent); B exponent 0
        [0x01, spec.raw(spec.reading_on), 0x00, 0x00],  # only the nominal reading given
        [0xFF, 0x00],  # sensor maximum and minimum reading
        upper,  # non-recoverable (none), critical, non-critical
        lower,
        [0x00, 0x00, 0x00, 0x00, 0x00],  # hysteresis, reserved, OEM
        [0xC0 | len(name)],  # id string: 8-bit ASCII
    ]
    body = bytes(itertools.chain.from_iterable(fields)) + name
    header = struct.pack("<HBBB", record_id, 0x51, 0x01, len(body))
    return header + body
