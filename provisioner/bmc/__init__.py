"""BMC access: the driver interface (base), the IPMI driver, the async pool, a fake."""

from provisioner.bmc.base import (
    BmcError,
    BootDevice,
    BootSetting,
    Driver,
    ErrorKind,
    Health,
    Inventory,
    PowerAction,
    SensorReading,
    Target,
)
from provisioner.bmc.pool import BmcPool

__all__ = [
    "BmcError",
    "BmcPool",
    "BootDevice",
    "BootSetting",
    "Driver",
    "ErrorKind",
    "Health",
    "Inventory",
    "PowerAction",
    "SensorReading",
    "Target",
]
