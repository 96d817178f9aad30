"""What the service needs from a BMC, independent of the protocol that reaches it.

One small interface per capability (power, boot device, inventory, health), as in
Ironic; a :class:`Driver` offers all four. A driver whose protocol or BMC lacks one still
has its methods and raises ``BmcError(ErrorKind.UNSUPPORTED, ...)`` from them, so callers
handle "not supported" like any other BMC answer. Drivers are chosen per node by name
(:mod:`provisioner.bmc.registry`). Driver calls block; the service runs them in a bounded
thread pool so they never block the API's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class ErrorKind(StrEnum):
    UNREACHABLE = "unreachable"
    AUTH = "authentication-failed"
    UNSUPPORTED = "not-supported"
    TIMEOUT = "timed-out"
    PROTOCOL = "protocol-error"
    BUSY = "busy"
    """The BMC said it is busy (HTTP 503 or 429) for longer than the call could wait."""
    CERTIFICATE = "certificate-refused"
    """TLS: the BMC's certificate is not the pinned one, or does not verify."""


class BmcError(Exception):
    """A BMC call failed; ``str(err)`` is a sentence an operator can act on."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        """For BUSY: the seconds the BMC asked its clients to wait, when it said."""


class PowerAction(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    RESET = "reset"
    SOFT_OFF = "soft-off"


class BootDevice(StrEnum):
    NETWORK = "network"
    DISK = "disk"
    # Reported, never chosen by the service: DEFAULT is "no override, the firmware's own
    # order" (setting it clears an override); OTHER is an override it does not use (CD, setup).
    DEFAULT = "default"
    OTHER = "other"


@dataclass(frozen=True)
class BootSetting:
    device: BootDevice
    persistent: bool = False
    uefi: bool = False


@dataclass(frozen=True)
class Target:
    """How to reach one BMC. The password is plaintext here: never log a Target."""

    address: str
    username: str
    password: str = field(repr=False)
    port: int = 623
    timeout: float = 10.0
    retries: int = 2
    cipher_suite: int = 3
    driver: str = "ipmi"
    """The registry's name of the driver that speaks to this BMC (the row's ``driver``)."""
    power_deadline: float = 20.0
    """Seconds a power action may take to show in the power state the BMC reports, for
    drivers whose BMCs accept an action before carrying it out (Redfish)."""
    tls_verify: bool = True
    """False: an HTTPS BMC's certificate is not checked at all (set per BMC, and logged)."""
    ca_bundle: str | None = None
    """A PEM file of CAs that an HTTPS BMC's certificate must chain to. Without one, the
    certificate is pinned on first contact (``tls_fingerprint``)."""
    tls_fingerprint: str | None = None
    """The pinned certificate: ``sha256:`` and the hex SHA-256 of its DER form."""

    @property
    def key(self) -> tuple[str, int]:
        """BMCs are limited per address and port, whoever logs in."""
        return (self.address, self.port)


@dataclass(frozen=True)
class SensorReading:
    name: str
    value: float | None
    units: str
    health: str  # "ok", "warning", "critical" or "unknown"


@dataclass(frozen=True)
class Inventory:
    """Facts read from the BMC: FRU, device id, MACs where reported. ``facts`` is what
    gets stored and matched against hardware profiles."""

    facts: dict[str, Any]


@dataclass(frozen=True)
class Health:
    health: str
    sensors: list[SensorReading]


class PowerControl(Protocol):
    def power_state(self) -> str:
        """'on' or 'off'."""
        ...

    def set_power(self, action: PowerAction) -> None: ...


class BootControl(Protocol):
    def boot_device(self) -> BootSetting: ...

    def set_boot_device(self, setting: BootSetting) -> None: ...


class InventoryReader(Protocol):
    def inventory(self) -> Inventory: ...


class HealthReader(Protocol):
    def health(self) -> Health: ...


class Driver(PowerControl, BootControl, InventoryReader, HealthReader, Protocol):
    """One BMC session with every capability. Methods block and raise :class:`BmcError`."""

    def certificate_fingerprint(self) -> str | None:
        """``sha256:<hex>`` of the TLS certificate the BMC presented to this session;
        None where the protocol has none (IPMI, Redfish over plain HTTP)."""
        ...

    def abort(self) -> None:
        """From another thread: make the call in progress give up soon. Never blocks;
        the driver is not used again afterwards."""
        ...

    def close(self) -> None: ...
