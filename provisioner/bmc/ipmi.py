"""IPMI driver on pyghmi 1.6.19.

It logs in through :mod:`provisioner.bmc.ipmi_login` (under its own deadline, with the
fixes of :mod:`provisioner.bmc.pyghmi_fixes` installed), speaks the few standard commands
it needs itself (predictable round trips, no vendor plug-ins on the hot path), leaves
FRU, SDR and sensor parsing to pyghmi, and turns every failure into a :class:`BmcError`
whose message says what to check. Passwords never reach a message or a log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyghmi.exceptions as pyghmi_exc
from pyghmi.constants import Health as PyghmiHealth
from pyghmi.ipmi import fru as pyghmi_fru
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
from provisioner.bmc.ipmi_login import describe, log_in, protocol_error, unreachable, where

log = logging.getLogger(__name__)

# Completion codes meaning "this BMC does not do that", per IPMI 2.0 table 5-2.
_UNSUPPORTED_CODES = {
    0x80: "parameter not supported",
    0xC1: "invalid command",
    0xC2: "command invalid for the given LUN",
    0xCC: "invalid data field in request",
    0xD5: "not supported in present state",
}
_PRIVILEGE_CODE = 0xD4
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)


class IpmiDriver:
    """One logged-in IPMI session to one BMC; implements :class:`base.Driver`.

    The constructor logs in and takes at most ``target.timeout`` seconds. Methods block
    (use :class:`provisioner.bmc.pool.BmcPool` to call them from async code); one driver
    serves one call at a time. pyghmi gives up by itself sooner than a long timeout: on a
    login nobody answers after about 5 s, on a command after about 9 s of retransmissions.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        login = log_in(target)
        self._session = login.session
        self._command = login.command

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
            raise protocol_error(
                self.target, "Get System Boot Options", f"a {len(data)}-byte answer"
            )
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
            raise protocol_error(self.target, "Get Device ID", f"a {len(devid)}-byte answer")
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

    def certificate_fingerprint(self) -> None:
        return None

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
            log.debug("logout from %s failed: %s", where(self.target), type(exc).__name__)

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
            raise protocol_error(self.target, name, type(exc).__name__) from exc

    def _command_error(
        self, name: str, code: int | None, message: str | None, started: float | None = None
    ) -> BmcError:
        target = self.target
        if self._session.fault is not None:
            return protocol_error(self.target, name, describe(self._session.fault))
        if code in _UNSUPPORTED_CODES:
            return BmcError(
                ErrorKind.UNSUPPORTED,
                f"The BMC at {where(target)} does not support {name} "
                f"(completion code 0x{code:02X}, {_UNSUPPORTED_CODES[code]}).",
            )
        if code == _PRIVILEGE_CODE:
            return BmcError(
                ErrorKind.AUTH,
                f"User {target.username!r} may not run {name} on the BMC at {where(target)}; "
                "give it the OPERATOR or ADMINISTRATOR privilege.",
            )
        lowered = (message or "").lower()
        if code == 0xFFFF or not lowered or lowered == "timeout" or "no longer" in lowered:
            elapsed = time.monotonic() - started if started is not None else target.timeout
            return unreachable(self.target, elapsed)
        detail = f"completion code 0x{code:02X}, {message}" if code else str(message)
        return protocol_error(self.target, name, detail)

    def _guid(self) -> str | None:
        try:
            raw = self._raw("Get System GUID", 0x06, 0x37)
        except BmcError as err:
            if err.kind is ErrorKind.UNSUPPORTED:
                return None
            raise
        if len(raw) < 16:
            raise protocol_error(self.target, "Get System GUID", f"a {len(raw)}-byte answer")
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


__all__ = ["IpmiDriver"]
