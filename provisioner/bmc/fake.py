"""In-memory BMCs for service tests, in the spirit of httpx's MockTransport.

    fleet = FakeFleet()
    bmc = fleet.add("10.0.0.5", users={"admin": "secret"})
    pool = BmcPool(driver_factory=fleet.driver)   # every target reaches this fleet
    ...
    bmc.fail("power_state", ErrorKind.UNREACHABLE)   # the next power_state call fails
    assert bmc.boots == [BootDevice.NETWORK]         # what the machine booted from

A :class:`FakeBmc` behaves like the IPMI driver's BMC as the service sees it: power
actions change the power state at once, a one-time boot override is used by the next
boot and then cleared, and errors carry the same kinds.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from provisioner.bmc import base


def _facts(address: str) -> dict[str, Any]:
    tail = address.replace(".", "").replace(":", "")[-6:]
    return {
        "manufacturer": "Fake Systems",
        "product": "FS-1000",
        "serial": f"FS{tail}",
        "asset_tag": None,
        "board_manufacturer": "Fake Systems",
        "board_product": "FS-1000 mainboard",
        "board_serial": f"FB{tail}",
        "firmware": "1.00",
        "device_id": {"manufacturer_id": 0, "product_id": 0, "device_revision": 0},
        "guid": None,
        "macs": [],
    }


@dataclass
class FakeBmc:
    """State of one fake BMC and the machine behind it. Thread-safe."""

    address: str
    port: int = 623
    users: dict[str, str] = field(default_factory=lambda: {"admin": "admin"}, repr=False)
    """Username to password."""
    power: str = "off"
    boot: base.BootSetting = field(
        default_factory=lambda: base.BootSetting(base.BootDevice.DEFAULT, True)
    )
    facts: dict[str, Any] = field(default_factory=dict)
    health: base.Health = field(
        default_factory=lambda: base.Health(
            "ok",
            [
                base.SensorReading("Inlet Temp", 24.0, "°C", "ok"),
                base.SensorReading("PSU1 Power", 180.0, "W", "ok"),
            ],
        )
    )
    delay: float = 0.0
    """Seconds every call takes, to simulate a slow or hung BMC."""
    logins: int = 0
    boots: list[base.BootDevice] = field(default_factory=list)
    """The device each boot (power on, cycle, reset) used: the override, else DEFAULT."""
    calls: list[str] = field(default_factory=list)
    _errors: dict[str, deque[base.BmcError]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.facts:
            self.facts = _facts(self.address)

    def fail(self, method: str, error: base.BmcError | base.ErrorKind, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` ("login", "power_state",
        "set_power", "boot_device", "set_boot_device", "inventory", "health") raise."""
        if isinstance(error, base.ErrorKind):
            error = base.BmcError(error, f"Injected {error} from the fake BMC at {self.address}.")
        with self._lock:
            self._errors.setdefault(method, deque()).extend([error] * times)

    def _enter(self, method: str, aborted: threading.Event | None = None) -> None:
        if self.delay:
            (aborted or threading.Event()).wait(self.delay)
        with self._lock:
            self.calls.append(method)
            queue = self._errors.get(method)
            if queue:
                raise queue.popleft()

    def _boot(self) -> None:
        self.boots.append(self.boot.device)
        if not self.boot.persistent:
            self.boot = base.BootSetting(base.BootDevice.DEFAULT, persistent=True)


class FakeDriver:
    """A session to a :class:`FakeBmc`; implements :class:`base.Driver`."""

    def __init__(self, bmc: FakeBmc, target: base.Target) -> None:
        bmc._enter("login")
        if bmc.users.get(target.username) != target.password:
            raise base.BmcError(
                base.ErrorKind.AUTH,
                f"The BMC at {target.address}:{target.port} refused the credentials for "
                f"user {target.username!r}; check the username and password.",
            )
        with bmc._lock:
            bmc.logins += 1
        self.bmc = bmc
        self.closed = False
        self.aborted = threading.Event()

    def _enter(self, method: str) -> None:
        self.bmc._enter(method, self.aborted)

    def power_state(self) -> str:
        self._enter("power_state")
        return self.bmc.power

    def set_power(self, action: base.PowerAction) -> None:
        bmc = self.bmc
        self._enter("set_power")
        with bmc._lock:
            if action in (base.PowerAction.OFF, base.PowerAction.SOFT_OFF):
                bmc.power = "off"
            elif action is base.PowerAction.ON and bmc.power == "on":
                return
            else:  # on from off, cycle, reset: the machine boots
                bmc.power = "on"
                bmc._boot()

    def boot_device(self) -> base.BootSetting:
        self._enter("boot_device")
        return self.bmc.boot

    def set_boot_device(self, setting: base.BootSetting) -> None:
        self._enter("set_boot_device")
        if setting.device is base.BootDevice.OTHER:
            raise base.BmcError(
                base.ErrorKind.UNSUPPORTED,
                f"Boot device {setting.device!r} cannot be set; use network, disk or default.",
            )
        self.bmc.boot = setting

    def inventory(self) -> base.Inventory:
        self._enter("inventory")
        return base.Inventory(facts=dict(self.bmc.facts))

    def health(self) -> base.Health:
        self._enter("health")
        return self.bmc.health

    def certificate_fingerprint(self) -> None:
        return None

    def abort(self) -> None:
        self.aborted.set()  # a delayed call returns at once

    def close(self) -> None:
        self.closed = True


class FakeFleet:
    """Fake BMCs by (address, port); :meth:`driver` is a ``BmcPool`` driver factory.

    An address without a BMC does not answer, unless ``adopt_unknown``: then it gets
    one on first contact, whose one user is the one logging in (the registry's ``fake``
    driver, where nobody adds BMCs by hand)."""

    def __init__(self, *, adopt_unknown: bool = False) -> None:
        self.bmcs: dict[tuple[str, int], FakeBmc] = {}
        self.adopt_unknown = adopt_unknown
        self._lock = threading.Lock()

    def add(self, address: str, **state: Any) -> FakeBmc:
        bmc = FakeBmc(address, **state)
        self.bmcs[(bmc.address, bmc.port)] = bmc
        return bmc

    def driver(self, target: base.Target) -> FakeDriver:
        with self._lock:  # pool workers log in to new addresses concurrently
            bmc = self.bmcs.get(target.key)
            if bmc is None and self.adopt_unknown:
                bmc = self.add(
                    target.address, port=target.port, users={target.username: target.password}
                )
        if bmc is None:
            raise base.BmcError(
                base.ErrorKind.UNREACHABLE,
                f"No answer from the BMC at {target.address}:{target.port} within "
                f"{target.timeout:g} s; check the address, the port and that IPMI over LAN "
                "is enabled.",
            )
        return FakeDriver(bmc, target)
