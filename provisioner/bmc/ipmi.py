"""IPMI driver on pyghmi 1.6.19.

pyghmi's own pacing does not fit a service (see /work/shared/notes/pyghmi.md): its login
can wait forever for a BMC that stays silent on an unknown user, its send races its own
I/O thread, and its housekeeping loop dies on the first stray exception. This module logs
in under its own deadline, speaks the few standard commands it needs itself (predictable
round trips, no vendor plug-ins on the hot path) and turns every failure into a
:class:`BmcError` whose message says what to check. Passwords never reach a message or a log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyghmi.exceptions as pyghmi_exc
import pyghmi.ipmi.private.session as pyghmi_session
from pyghmi.constants import Health as PyghmiHealth
from pyghmi.ipmi import fru as pyghmi_fru
from pyghmi.ipmi.command import Command
from pyghmi.ipmi.private.util import decode_wireformat_uuid

from provisioner.bmc.base import (
    BmcError,
    BootDevice,
    BootSetting,
    ErrorKind,
    Health,
    Inventory,
    PowerAction,
    SensorReading,
    Target,
)

log = logging.getLogger(__name__)

SUPPORTED_CIPHER_SUITES = (3, 17)

# How long a login keeps pumping pyghmi's event loop between looks at its own deadline;
# another thread (the keepalive loop, another call) may have handled our packet meanwhile.
_PUMP_INTERVAL = 0.05


def _sendto_keeping_mode(sock: socket.socket, packet: bytes, sockaddr: Any) -> None:
    """Replaces ``pyghmi...session._io_sendto``.

    pyghmi's version switches the shared socket to blocking for each send while its I/O
    thread switches it back before ``recvfrom``; interleaved, the I/O thread blocks on an
    idle socket and every session in the process stalls (trap 2 in the notes). This one
    never touches the blocking mode. A full send buffer is waited out briefly; any other
    failure drops the datagram, as pyghmi does, and its retry timers send it again.
    """
    try:
        sock.sendto(packet, sockaddr)
    except BlockingIOError:
        with contextlib.suppress(OSError):
            select.select((), (sock,), (), 1.0)
            sock.sendto(packet, sockaddr)
    except OSError:
        pass


# Every pyghmi caller (client and server sessions) looks the attribute up at call time.
pyghmi_session._io_sendto = _sendto_keeping_mode


def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    """Replaces ``pyghmi...session._io_wait`` (same steps), closing a lost wake-up.

    A thread waiting for a BMC's answer is woken by the I/O thread only for a packet
    that arrives after its wait was registered; an answer that came in just before was
    left queued until pyghmi's retry timer, 0.5-1 s later. So look for one after
    registering, before sleeping.
    """
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + pyghmi_session._monotonic_time()  # pyghmi's clock, not ours
    pyghmi_session.ioqueue.append((deadline, evt, myaddr))
    # Only for a wait for an answer (pyghmi's _cmdwait passes evq and is woken through it;
    # it does not read packets, so returning early there would only spin).
    if myaddr is not None and evq is None and _answer_queued(myaddr):
        return
    if deadline < pyghmi_session.selectdeadline:
        _wake_event_loop()
    evt.wait()


def _answer_queued(sockaddr: Any) -> bool:
    sessions = pyghmi_session.Session.bmc_handlers.get(sockaddr)
    return bool(sessions) and any(s.pktqueue for s in list(sessions.values()))


pyghmi_session._io_wait = _io_wait

# pyghmi takes its two global locks in opposite orders: a send holds KEEPALIVE_SESSIONS
# and then takes WAITING_SESSIONS, while its event loop holds WAITING_SESSIONS and, on a
# timeout, takes KEEPALIVE_SESSIONS. Two threads doing so at once deadlock every IPMI
# session of the process for good (seen in this module's tests). One re-entrant lock for
# both cannot deadlock; the module looks both names up at each use.
pyghmi_session.WAITING_SESSIONS = pyghmi_session.KEEPALIVE_SESSIONS


_keepalive_lock = threading.Lock()
_keepalive_thread: threading.Thread | None = None


def start_keepalive() -> None:
    """Start, once per process, the thread that keeps idle pyghmi sessions alive.

    pyghmi sends keepalives only while some thread waits inside its event loop. Its own
    ``Housekeeper`` spins a CPU while no session exists (``wait_for_rsp()`` without a
    timeout returns at once) and dies on the first exception a packet handler raises;
    this loop waits at most a second at a time and survives such packets.
    """
    global _keepalive_thread
    with _keepalive_lock:
        if _keepalive_thread is not None:
            return
        _keepalive_thread = threading.Thread(
            target=_keepalive_loop, name="ipmi-keepalive", daemon=True
        )
        _keepalive_thread.start()


def _keepalive_loop() -> None:
    while True:
        try:
            pyghmi_session.Session.wait_for_rsp(timeout=1.0)
        except Exception:
            log.exception("IPMI event loop: a packet handler failed; carrying on")


class _Session(pyghmi_session.Session):  # type: ignore[misc]
    """A client session that proposes the target's cipher suite, handles the answers to
    its commands in the thread that waits for them, and keeps handler faults to itself.

    Stock pyghmi always proposes suite 17 first; a BMC that ignores the proposal and
    answers with suite 3 makes the client fail with a ``struct.error`` deep in RAKP2
    (trap 1). Such faults are raised in whichever thread pumps the event loop, so they
    are recorded here and reported by the login that owns the session.
    """

    suite = 17
    fault: BaseException | None = None
    # The thread waiting in awaitresponse for this session's answer, if any.
    _owner: int | None = None

    @classmethod
    def _assignsocket(cls, server: Any = None, forbiddensockets: Any = ()) -> Any:
        # Non-blocking from birth, and never switched again: pyghmi's receive switches
        # to non-blocking before each read, but a replacement I/O loop (the lab's)
        # may rely on the mode alone; a blocking socket there freezes the I/O thread.
        sock = super()._assignsocket(server, forbiddensockets)
        sock.setblocking(False)
        return sock

    def _initsession(self) -> None:
        super()._initsession()
        # pyghmi's attemptedhash: 256 proposes suite 17 (then falls back to 3), 1 suite 3.
        self.attemptedhash = 1 if self.suite == 3 else 256

    def _mark_broken(self, error: Any = None) -> None:
        # Its logout sends through raw_command, which first waits for the command in
        # progress to end; when a command times out, that is the very command failing
        # here, in this thread, while pyghmi holds its session lock: every session of
        # the process would wait with it. The failing command is over; say so first.
        self.incommand = False
        super()._mark_broken(error)

    def awaitresponse(self, retry: bool, netfn: int, command: int) -> None:
        self._owner = threading.get_ident()
        try:
            super().awaitresponse(retry, netfn, command)
        finally:
            self._owner = None

    def process_pktqueue(self) -> None:
        owner = self._owner
        if owner is not None and owner != threading.get_ident():
            # Leave the answer to the thread waiting for it: pyghmi wakes that thread for
            # it, but if another thread took the packet first, the waiter found nothing,
            # slept again and noticed the answer only at its retry timer (0.5-1 s late).
            return
        try:
            super().process_pktqueue()
        except Exception as exc:
            self.fault = exc
            with contextlib.suppress(Exception):
                self.onlogon({"error": f"unreadable answer ({type(exc).__name__})"})


class _Suite3Session(_Session):
    suite = 3


_SESSION_CLASSES: dict[int, type[_Session]] = {3: _Suite3Session, 17: _Session}


class _OwnKey(bytes):
    """The Kg to log in with: the password, which is what pyghmi uses when given no Kg,
    but equal only to itself. pyghmi hands a login an existing session whose
    credentials compare equal, even one that is failing or proposed another cipher
    suite; with this key a driver only ever gets the session it opened, and one
    driver's logout cannot break another's session."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


# Completion codes meaning "this BMC does not do that", per IPMI 2.0 table 5-2.
_UNSUPPORTED_CODES = {
    0x80: "parameter not supported",
    0xC1: "invalid command",
    0xC2: "command invalid for the given LUN",
    0xCC: "invalid data field in request",
    0xD5: "not supported in present state",
}
_PRIVILEGE_CODE = 0xD4
_AUTH_PHRASES = (
    "incorrect password",
    "unauthorized name",
    "invalid username",
    "unauthorized role",
    "invalid role",
    "invalid integrity check",
    "rakp",
    "kg",
)
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)


class IpmiDriver:
    """One logged-in IPMI session to one BMC; implements :class:`base.Driver`.

    The constructor logs in and takes at most ``target.timeout`` seconds. Methods block
    (use :class:`provisioner.bmc.pool.BmcPool` to call them from async code); one driver
    serves one call at a time. pyghmi gives up by itself sooner than a long timeout: on a
    login nobody answers after about 5 s, on a command after about 9 s of retransmissions.
    """

    def __init__(self, target: Target) -> None:
        if target.cipher_suite not in SUPPORTED_CIPHER_SUITES:
            raise BmcError(
                ErrorKind.UNSUPPORTED,
                f"Cipher suite {target.cipher_suite} is not supported for the BMC at "
                f"{_where(target)}; set it to 3 (SHA-1) or 17 (SHA-256).",
            )
        start_keepalive()
        self.target = target
        self._kg = _OwnKey(target.password.encode())
        self._session = self._login()
        self._command = self._attach_command()

    # -- power ----------------------------------------------------------------------

    def power_state(self) -> str:
        data = self._raw("Get Chassis Status", 0x00, 0x01)
        return "on" if data[0] & 1 else "off"

    def set_power(self, action: PowerAction) -> None:
        """Ask for ``action`` and return without waiting for the machine to get there;
        check with :meth:`power_state`. Cycle and reset of a machine that is off power
        it on, as a reboot would (a BMC rejects or ignores them while off)."""
        if action in (PowerAction.CYCLE, PowerAction.RESET) and self.power_state() == "off":
            action = PowerAction.ON
        directive = {
            PowerAction.OFF: 0,
            PowerAction.ON: 1,
            PowerAction.CYCLE: 2,
            PowerAction.RESET: 3,
            PowerAction.SOFT_OFF: 5,
        }[action]
        try:
            self._raw(f"Chassis Control ({action})", 0x00, 0x02, [directive])
        except BmcError as err:
            # Some BMCs refuse "on" while on or "off" while off; that is success here.
            wanted = "on" if action is PowerAction.ON else "off"
            if (
                err.kind is ErrorKind.UNSUPPORTED
                and action in (PowerAction.ON, PowerAction.OFF, PowerAction.SOFT_OFF)
                and self.power_state() == wanted
            ):
                return
            raise

    # -- boot device ----------------------------------------------------------------

    def boot_device(self) -> BootSetting:
        data = self._raw("Get System Boot Options", 0x00, 0x09, [5, 0, 0])
        if len(data) < 4:
            raise self._protocol("Get System Boot Options", f"a {len(data)}-byte answer")
        flags, device = data[2], (data[3] >> 2) & 0x0F
        if data[1] & 0x80 or not flags & 0x80:  # parameter locked, or no valid override
            return BootSetting(BootDevice.DEFAULT, persistent=True)
        named = {0: BootDevice.DEFAULT, 1: BootDevice.NETWORK, 2: BootDevice.DISK}
        return BootSetting(
            named.get(device, BootDevice.OTHER),
            persistent=bool(flags & 0x40),
            uefi=bool(flags & 0x20),
        )

    def set_boot_device(self, setting: BootSetting) -> None:
        codes = {BootDevice.DEFAULT: 0x00, BootDevice.NETWORK: 0x04, BootDevice.DISK: 0x08}
        if setting.device not in codes:
            raise BmcError(
                ErrorKind.UNSUPPORTED,
                f"Boot device {setting.device!r} cannot be set; use network, disk or default.",
            )
        flags = 0x80 | (0x40 if setting.persistent else 0) | (0x20 if setting.uefi else 0)
        if setting.device is BootDevice.DEFAULT:
            flags = 0  # clears the override: the firmware's own order applies
        # As ipmitool and pyghmi do: clear "boot info acknowledge" first, so the BIOS sees
        # the new flags as unread.
        self._raw("Set System Boot Options (acknowledge)", 0x00, 0x08, [3, 8])
        self._raw("Set System Boot Options", 0x00, 0x08, [5, flags, codes[setting.device], 0, 0, 0])

    # -- inventory and health -------------------------------------------------------

    def inventory(self) -> Inventory:
        devid = self._raw("Get Device ID", 0x06, 0x01)
        if len(devid) < 11:
            raise self._protocol("Get Device ID", f"a {len(devid)}-byte answer")
        guid = self._guid()
        fru = self._fru()
        facts: dict[str, Any] = {
            "manufacturer": fru.get("Manufacturer"),
            "product": fru.get("Product name"),
            "serial": fru.get("Serial Number"),
            "asset_tag": fru.get("Asset Number"),
            "board_manufacturer": fru.get("Board manufacturer"),
            "board_product": fru.get("Board product name"),
            "board_serial": fru.get("Board serial number"),
            "firmware": f"{devid[2] & 0x7F}.{devid[3] >> 4 & 0xF}{devid[3] & 0xF}",
            "device_id": {
                "manufacturer_id": devid[6] | devid[7] << 8 | devid[8] << 16,
                "product_id": devid[9] | devid[10] << 8,
                "device_revision": devid[1] & 0x0F,
            },
            "guid": guid,
            "macs": self._macs(),
        }
        return Inventory(facts={k: _text(v) for k, v in facts.items()})

    def health(self) -> Health:
        with self._translate("Get Sensor Reading"):
            readings = list(self._command.get_sensor_data())
        worst = PyghmiHealth.Ok
        sensors = []
        for r in readings:
            worst |= r.health
            value = None if r.value is None or r.unavailable else float(r.value)
            sensors.append(SensorReading(r.name, value, r.units or "", _health_word(r.health)))
        return Health(_health_word(worst), sensors)

    def abort(self) -> None:
        # pyghmi gives up on a command when its retry interval outgrows maxtimeout; with
        # 0 that happens at the next retry timer. A single attribute store: safe from
        # any thread, never blocks.
        self._session.maxtimeout = 0

    def close(self) -> None:
        """Log out; never raises (the session may already be gone)."""
        try:
            self._session.logout()
        except Exception as exc:  # a dead session is closed all the same
            log.debug("logout from %s failed: %s", _where(self.target), type(exc).__name__)

    # -- login ----------------------------------------------------------------------

    def _login(self) -> _Session:
        target = self.target
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def onlogon(response: dict[str, Any]) -> None:
            outcome.update(response)
            done.set()
            _wake_event_loop()

        started = time.monotonic()
        deadline = started + target.timeout
        session_class = _SESSION_CLASSES[target.cipher_suite]
        try:
            # bytes, not str: pyghmi's session cache compares stored bytes and would spin
            # on a live session when given str (trap 3). onlogon makes the login
            # asynchronous, so that our deadline rules, not pyghmi's (trap 4).
            for attempt in (1, 2):
                try:
                    session = session_class(
                        bmc=target.address,
                        userid=target.username.encode(),
                        password=target.password.encode(),
                        port=target.port,
                        kg=self._kg,
                        onlogon=onlogon,
                    )
                    break
                except KeyError:
                    # pyghmi prunes a broken cached session in __new__ while its I/O
                    # thread may prune the same one: the loser's del raises KeyError.
                    # The cache is clean afterwards, so one more try is enough.
                    if attempt == 2:
                        raise
            while not done.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                pyghmi_session.Session.wait_for_rsp(timeout=min(remaining, _PUMP_INTERVAL))
        except BmcError:
            raise
        except Exception as exc:
            raise self._protocol("login", type(exc).__name__) from exc
        if not done.is_set():
            session._mark_broken()  # stop pyghmi's retries for this abandoned login
            raise self._login_silent(session, time.monotonic() - started)
        if "error" in outcome:
            raise self._login_failed(session, outcome["error"], time.monotonic() - started)
        # pyghmi logs in again when a command times out, from inside whichever thread
        # handles the answer, which then waits there for the timed-out command (up to
        # tens of seconds): a login or call for another BMC would be stuck with it. A
        # timed-out command fails instead; the pool retries reads with a new session.
        session.logontries = 0
        return session

    def _attach_command(self) -> Command:
        # Command's constructor finds our logged-in session in pyghmi's session cache (same
        # key object) and adopts it; with onlogon it never starts a blocking login.
        target = self.target
        command = Command(
            bmc=target.address,
            userid=target.username.encode(),
            password=target.password.encode(),
            port=target.port,
            kg=self._kg,
            onlogon=lambda response, command: None,
        )
        if command.ipmi_session is not self._session:
            with contextlib.suppress(Exception):
                command.ipmi_session.logout()
            self.close()
            raise self._protocol("login", "a session other than the one just opened")
        return command

    def _login_silent(self, session: _Session, elapsed: float) -> BmcError:
        target = self.target
        if session.fault is not None:
            return self._protocol("login", _describe(session.fault))
        if getattr(session, "currentchannel", None) is None:
            return self._unreachable(elapsed)
        return BmcError(
            ErrorKind.TIMEOUT,
            f"The BMC at {_where(target)} answered but did not finish the login for user "
            f"{target.username!r} within {target.timeout:g} s; check the username (many BMCs "
            "stay silent for an unknown user) and that the BMC is not overloaded.",
        )

    def _login_failed(self, session: _Session, error: Any, elapsed: float) -> BmcError:
        target = self.target
        if session.fault is not None:
            return self._protocol("login", _describe(session.fault))
        text = str(error or "")
        lowered = text.lower()
        if not text or lowered == "timeout" or "no longer connected" in lowered:
            return self._unreachable(elapsed)
        if "cipher suite" in lowered:
            return BmcError(
                ErrorKind.UNSUPPORTED,
                f"The BMC at {_where(target)} does not accept cipher suite "
                f"{target.cipher_suite}; set the BMC's cipher suite to one it supports "
                "(3 or 17).",
            )
        if "insufficient resources" in lowered:
            return BmcError(
                ErrorKind.PROTOCOL,
                f"The BMC at {_where(target)} has no free session ({text}); wait for idle "
                "sessions to expire or reset the BMC.",
            )
        if any(phrase in lowered for phrase in _AUTH_PHRASES):
            return BmcError(
                ErrorKind.AUTH,
                f"The BMC at {_where(target)} refused the credentials for user "
                f"{target.username!r} ({text}); check the username and password.",
            )
        return self._protocol("login", text)

    # -- commands -------------------------------------------------------------------

    def _raw(self, name: str, netfn: int, command: int, data: list[int] | None = None) -> bytes:
        with self._translate(name):
            response = self._session.raw_command(netfn=netfn, command=command, data=data or [])
        code = response.get("code", 0)
        if "error" in response or code:
            raise self._command_error(name, code, response.get("error"))
        return bytes(response["data"])

    @contextlib.contextmanager
    def _translate(self, name: str) -> Iterator[None]:
        """pyghmi raises IpmiException (with or without a completion code) and, on answers
        it cannot parse, whatever Python raises; all become BmcError."""
        started = time.monotonic()
        try:
            yield
        except BmcError:
            raise
        except pyghmi_exc.IpmiException as exc:
            message = str(exc.args[0]) if exc.args and exc.args[0] is not None else None
            raise self._command_error(name, exc.ipmicode, message, started) from exc
        except Exception as exc:
            raise self._protocol(name, type(exc).__name__) from exc

    def _command_error(
        self, name: str, code: int | None, message: str | None, started: float | None = None
    ) -> BmcError:
        target = self.target
        if self._session.fault is not None:
            return self._protocol(name, _describe(self._session.fault))
        if code in _UNSUPPORTED_CODES:
            return BmcError(
                ErrorKind.UNSUPPORTED,
                f"The BMC at {_where(target)} does not support {name} "
                f"(completion code 0x{code:02X}, {_UNSUPPORTED_CODES[code]}).",
            )
        if code == _PRIVILEGE_CODE:
            return BmcError(
                ErrorKind.AUTH,
                f"User {target.username!r} may not run {name} on the BMC at {_where(target)}; "
                "give it the OPERATOR or ADMINISTRATOR privilege.",
            )
        lowered = (message or "").lower()
        if code == 0xFFFF or not lowered or lowered == "timeout" or "no longer" in lowered:
            elapsed = time.monotonic() - started if started is not None else target.timeout
            return self._unreachable(elapsed)
        detail = f"completion code 0x{code:02X}, {message}" if code else str(message)
        return self._protocol(name, detail)

    def _guid(self) -> str | None:
        try:
            raw = self._raw("Get System GUID", 0x06, 0x37)
        except BmcError as err:
            if err.kind is ErrorKind.UNSUPPORTED:
                return None
            raise
        if len(raw) < 16:
            raise self._protocol("Get System GUID", f"a {len(raw)}-byte answer")
        if raw[:16] in (bytes(16), b"\xff" * 16):
            return None  # unset, as on many boards
        # Lowercase canonical form, as SMBIOS tools and the rest of the service write it.
        return str(uuid.UUID(decode_wireformat_uuid(raw)))

    def _fru(self) -> dict[str, Any]:
        """FRU 0 (the system), or {} where the BMC has none."""
        try:
            with self._translate("Read FRU Data"):
                info = pyghmi_fru.FRU(ipmicmd=self._command).info
        except BmcError as err:
            if err.kind is ErrorKind.UNSUPPORTED:
                return {}
            raise
        return dict(info or {})

    def _macs(self) -> list[str]:
        """Host MACs from the inventory where the BMC reports them (vendor FRU records);
        [] where it keeps an inventory but lists none, or has no SDR to find one in."""
        found: list[str] = []
        try:
            with self._translate("Get Inventory"):
                for _, component in self._command.get_inventory():
                    for key, value in (component or {}).items():
                        if "mac" in str(key).lower() and isinstance(value, str):
                            mac = _normal_mac(value)
                            if mac and mac not in found:
                                found.append(mac)
        except BmcError as err:
            if err.kind is not ErrorKind.UNSUPPORTED:
                raise
        return found

    # -- messages -------------------------------------------------------------------

    def _unreachable(self, elapsed: float) -> BmcError:
        return BmcError(
            ErrorKind.UNREACHABLE,
            f"No answer from the BMC at {_where(self.target)} within {elapsed:.1f} s; check "
            "the address, the port and that IPMI over LAN is enabled.",
        )

    def _protocol(self, name: str, detail: str) -> BmcError:
        return BmcError(
            ErrorKind.PROTOCOL,
            f"The BMC at {_where(self.target)} gave an answer to {name} that could not be "
            f"used ({detail}); check its firmware, or try cipher suite 3.",
        )


def _wake_event_loop() -> None:
    """Wake every thread waiting in pyghmi's event loop, as pyghmi itself does: a login
    finished by another thread would otherwise be noticed only after _PUMP_INTERVAL."""
    with contextlib.suppress(OSError, IndexError):
        sock = pyghmi_session.iosockets[0]
        sock.sendto(b"\x01", (pyghmi_session.myself, sock.getsockname()[1]))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _where(target: Target) -> str:
    return f"{target.address}:{target.port}"


def _health_word(health: int) -> str:
    if health & (PyghmiHealth.Critical | PyghmiHealth.Failed):
        return "critical"
    if health & PyghmiHealth.Warning:
        return "warning"
    return "ok"


def _normal_mac(value: str) -> str | None:
    value = value.strip()
    if not _MAC.match(value):
        return None
    digits = re.sub(r"[:-]", "", value).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _text(value: Any) -> Any:
    """FRU fields come back as str, or bytearray for binary ones; facts are JSON."""
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return value


__all__ = ["SUPPORTED_CIPHER_SUITES", "IpmiDriver", "start_keepalive"]
