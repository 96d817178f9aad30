"""BMC access: the capability interfaces (base), drivers by name (registry: IPMI, fake),
the async pool that runs driver calls."""

from provisioner.bmc.base import (
    BmcError,
    BootControl,
    BootDevice,
    BootSetting,
    Driver,
    ErrorKind,
    Health,
    HealthReader,
    Inventory,
    InventoryReader,
    PowerAction,
    PowerControl,
    SensorReading,
    Target,
)
from provisioner.bmc.pool import BmcPool
from provisioner.bmc.registry import DRIVER_NAMES, DriverFactory, DriverRegistry, service_drivers

__all__ = [
    "DRIVER_NAMES",
    "BmcError",
    "BmcPool",
    "BootControl",
    "BootDevice",
    "BootSetting",
    "Driver",
    "DriverFactory",
    "DriverRegistry",
    "ErrorKind",
    "Health",
    "HealthReader",
    "Inventory",
    "InventoryReader",
    "PowerAction",
    "PowerControl",
    "SensorReading",
    "Target",
    "service_drivers",
]
