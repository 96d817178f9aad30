"""Sensor readings from Redfish payloads, for :meth:`RedfishDriver.health`: the legacy
Chassis ``Thermal``/``Power`` arrays and the ``Sensors`` collection (Redfish 2020.4+),
in the units the IPMI driver reports, so a node reads the same through either protocol.

Parsing only; the driver does the requests. docs/redfish.md ("Health") says which
resources are read and why.
"""

from __future__ import annotations

from typing import Any

from provisioner.bmc.base import SensorReading

# Sensors read from a Sensors collection, at most: without $expand each costs a GET, and
# a large server lists a few hundred (every DIMM, drive and VR). The first ones are the
# chassis-wide temperatures, fans and rails on the BMCs we know; the rest are left.
MAX_SENSORS = 64
# The legacy arrays read, by resource: what the IPMI SDR of the same machine lists.
LEGACY = (("Thermal", ("Temperatures", "Fans")), ("Power", ("Voltages",)))
# DMTF units (UCUM in Sensor.ReadingUnits) in the IPMI driver's words (pyghmi's).
_UNITS = {"Cel": "°C", "ReadingCelsius": "°C", "ReadingVolts": "V"}
_HEALTH = {"ok": "ok", "warning": "warning", "critical": "critical"}


def health_word(resource: dict[str, Any]) -> str:
    word = str((resource.get("Status") or {}).get("Health") or "").lower()
    return _HEALTH.get(word, "unknown")


def expand_query(service_root: dict[str, Any]) -> str:
    """The query that reads a collection's members with it (``?$expand=.($levels=1)``)
    where the service root advertises it, else "" (the members are read one by one).
    ``.`` expands the members and not ``Links``; without ``Levels`` support, one level is
    what ``$expand=.`` means anyway."""
    features = (service_root.get("ProtocolFeaturesSupported") or {}).get("ExpandQuery") or {}
    if not features.get("NoLinks"):
        return ""
    return "?$expand=.($levels=1)" if features.get("Levels") else "?$expand=."


def legacy(payload: dict[str, Any], arrays: tuple[str, ...]) -> list[SensorReading]:
    """The readings of a Thermal or Power resource's ``arrays``."""
    return [reading(item) for name in arrays for item in payload.get(name) or []]


def reading(item: dict[str, Any]) -> SensorReading:
    """One legacy array member or Sensor resource."""
    for key in ("ReadingCelsius", "ReadingVolts", "Reading"):
        if key in item:
            value = item[key]
            units = _UNITS.get(key) or str(item.get("ReadingUnits") or "")
            break
    else:
        value, units = None, ""
    number = float(value) if isinstance(value, int | float) else None
    name = str(item.get("Name") or item.get("MemberId") or item.get("Id"))
    return SensorReading(name, number, _UNITS.get(units, units), health_word(item))


def is_reference(member: Any) -> bool:
    """A collection member that names its resource only (not expanded)."""
    return isinstance(member, dict) and list(member) == ["@odata.id"]


__all__ = [
    "LEGACY",
    "MAX_SENSORS",
    "expand_query",
    "health_word",
    "is_reference",
    "legacy",
    "reading",
]
