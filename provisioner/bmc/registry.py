"""BMC drivers by name: a node's ``bmc.driver`` (carried in ``Target.driver``) chooses
the driver that speaks to its BMC.

    drivers = service_drivers()
    pool = BmcPool(driver_factory=drivers)        # each target gets its own driver's session
    drivers(target)                               # or one session, outside the pool

``ipmi`` is :class:`provisioner.bmc.ipmi.IpmiDriver`; ``redfish`` is
:class:`provisioner.bmc.redfish.RedfishDriver`; ``fake`` is an in-memory BMC per address
(:mod:`provisioner.bmc.fake`), for trying the service without hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from provisioner.bmc.base import BmcError, Driver, ErrorKind, Target
from provisioner.bmc.fake import FakeFleet

OnPin = Callable[[Target, str], None]
"""Told a BMC's certificate fingerprint (``sha256:<hex>``) when a Redfish driver pins it
on first contact; called from the worker thread that logs in."""

DriverFactory = Callable[[Target], Driver]
"""Logs in to ``target``'s BMC and returns the session, or raises :class:`BmcError`."""


class DriverRegistry:
    """Driver factories by name; calling the registry with a target is itself a
    :data:`DriverFactory` that picks the factory ``target.driver`` names."""

    def __init__(self, factories: Mapping[str, DriverFactory]) -> None:
        self._factories = dict(factories)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def __call__(self, target: Target) -> Driver:
        factory = self._factories.get(target.driver)
        if factory is None:
            raise BmcError(
                ErrorKind.UNSUPPORTED,
                f"The BMC at {target.address}:{target.port} names driver {target.driver!r}, "
                f"which this service does not have; use one of {', '.join(self.names)}.",
            )
        return factory(target)


def _ipmi(target: Target) -> Driver:
    # Imported at the first IPMI login: pyghmi takes a tenth of a second to load, and
    # what only needs the driver names (the API's schemas, the CLI) should not pay it.
    from provisioner.bmc.ipmi import IpmiDriver

    return IpmiDriver(target)


def _redfish(on_pin: OnPin | None) -> DriverFactory:
    def factory(target: Target) -> Driver:
        # Imported at the first Redfish login, for the same reason as _ipmi.
        from provisioner.bmc.redfish import RedfishDriver

        return RedfishDriver(target, on_pin=on_pin)

    return factory


def service_drivers(
    fake: FakeFleet | None = None, *, on_pin: OnPin | None = None
) -> DriverRegistry:
    """The drivers a service offers. Its ``fake`` BMCs live as long as the registry, in
    ``fake`` when given, else in a fleet that makes a BMC for any address on first
    contact, with the credentials that first logged in. ``on_pin(target, fingerprint)``
    records a Redfish BMC's certificate pinned on first contact (trust on first use)."""
    fleet = fake if fake is not None else FakeFleet(adopt_unknown=True)
    return DriverRegistry({"ipmi": _ipmi, "redfish": _redfish(on_pin), "fake": fleet.driver})


DRIVER_NAMES = service_drivers().names
"""What a BMC row's ``driver`` may say."""
