"""The machine's sensors as a Redfish BMC serves them: the readings, names and power
dependence the node's IPMI BMC reports through its SDR and Get Sensor Reading
(`lab.bmc`), in one of two shapes.

- Legacy (generic, Dell- and Supermicro-like): the Chassis' ``Thermal`` (Temperatures,
  Fans) and ``Power`` (Voltages), deprecated since Redfish 2020.4 yet still what most
  deployed BMCs serve;
- ``Sensors`` (HPE-like, as iLO 6 and other 2020.4+ firmware): the Chassis' Sensors
  collection, one Sensor per reading, with ``ThermalSubsystem`` (its Fans pointing at
  their Sensors) and ``PowerSubsystem`` beside it, and no Thermal or Power.

A reading the IPMI BMC reports "unavailable" (no standby power while the machine is
off) is null here, its state ``StandbyOffline``; health is the IPMI BMC's threshold
comparison, so both protocols tell the same thing of the same machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from lab.machine import Machine, SensorSpec
from lab.redfish.dialects import Traits
from lab.redfish.odata import Json, collection, link, resource, status

# IPMI sensor type → Redfish ReadingType and its UCUM unit (Sensor schema).
_KINDS = {0x01: ("Temperature", "Cel"), 0x02: ("Voltage", "V"), 0x04: ("Rotational", "RPM")}
# IPMI entity id → Redfish PhysicalContext.
_CONTEXTS = {0x37: "Intake", 0x03: "CPU", 0x1D: "Fan", 0x0A: "PowerSupply"}


def chassis_links(traits: Traits, chassis: str) -> Json:
    """What the Chassis links to for its sensors, in the dialect's shape."""
    if traits.sensors_collection:
        return {
            "Sensors": link(f"{chassis}/Sensors"),
            "ThermalSubsystem": link(f"{chassis}/ThermalSubsystem"),
            "PowerSubsystem": link(f"{chassis}/PowerSubsystem"),
        }
    return {"Thermal": link(f"{chassis}/Thermal"), "Power": link(f"{chassis}/Power")}


def sensor_routes(machine: Machine, traits: Traits, chassis: str) -> dict[str, Callable[[], Json]]:
    """Every sensor resource path under ``chassis`` and what builds its payload."""
    if not traits.sensors_collection:
        return {
            f"{chassis}/Thermal": lambda: _thermal(machine, chassis),
            f"{chassis}/Power": lambda: _power(machine, chassis),
        }
    sensors = f"{chassis}/Sensors"
    thermal = f"{chassis}/ThermalSubsystem"
    fans = [s for s in machine.sensors if s.sensor_type == 0x04]
    routes: dict[str, Callable[[], Json]] = {
        sensors: lambda: collection(
            sensors,
            "Sensor",
            "Sensor Collection",
            [f"{sensors}/{ident(s)}" for s in machine.sensors],
        ),
        thermal: lambda: resource(
            thermal,
            "ThermalSubsystem",
            "ThermalSubsystem",
            "Thermal Subsystem",
            Fans=link(f"{thermal}/Fans"),
            Status=status(),
        ),
        f"{thermal}/Fans": lambda: collection(
            f"{thermal}/Fans", "Fan", "Fan Collection", [f"{thermal}/Fans/{ident(s)}" for s in fans]
        ),
        # The lab models no power supply of its own: its PSU rail is a sensor only.
        f"{chassis}/PowerSubsystem": lambda: resource(
            f"{chassis}/PowerSubsystem",
            "PowerSubsystem",
            "PowerSubsystem",
            "Power Subsystem",
            Status=status(),
        ),
    }
    for spec in machine.sensors:
        path = f"{sensors}/{ident(spec)}"
        routes[path] = partial(_sensor, machine, spec.number, path)
    for spec in fans:
        path = f"{thermal}/Fans/{ident(spec)}"
        routes[path] = partial(_fan, machine, spec.number, path, f"{sensors}/{ident(spec)}")
    return routes


def ident(spec: SensorSpec) -> str:
    """The sensor's Id: its IPMI name, URL-safe (``PSU1 12V`` → ``PSU1_12V``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", spec.name).strip("_")


def reading(machine: Machine, spec: SensorSpec) -> float | None:
    """The reading at the sensor's own resolution, as the IPMI BMC's conversion gives."""
    value = machine.reading(spec)
    return None if value is None else round(value, max(0, -spec.exponent))


def health(spec: SensorSpec, value: float | None) -> str:
    """The IPMI BMC's threshold comparison (lab.bmc, Get Sensor Reading) as a Redfish
    Health: a critical threshold reached is Critical, a non-critical one Warning; an
    unavailable reading crosses none."""
    if value is None:
        return "OK"
    if value <= spec.lower_critical or value >= spec.upper_critical:
        return "Critical"
    if value <= spec.lower_noncritical or value >= spec.upper_noncritical:
        return "Warning"
    return "OK"


def _status(machine: Machine, spec: SensorSpec) -> Json:
    value = reading(machine, spec)
    return status("Enabled" if value is not None else "StandbyOffline", health(spec, value))


def _legacy(machine: Machine, spec: SensorSpec, path: str, index: int, key: str) -> Json:
    """A member of a Thermal or Power array, thresholds as the SDR gives them."""
    units = {"ReadingUnits": "RPM"} if key == "Reading" else {}
    return {
        "@odata.id": f"{path}/{index}",
        "MemberId": str(index),
        "Name": spec.name,
        "SensorNumber": spec.number,
        key: reading(machine, spec),
        **units,
        "LowerThresholdCritical": spec.lower_critical,
        "LowerThresholdNonCritical": spec.lower_noncritical,
        "UpperThresholdNonCritical": spec.upper_noncritical,
        "UpperThresholdCritical": spec.upper_critical,
        "PhysicalContext": _CONTEXTS.get(spec.entity, "SystemBoard"),
        "Status": _status(machine, spec),
    }


def _array(machine: Machine, path: str, sensor_type: int, key: str) -> list[Json]:
    chosen = [s for s in machine.sensors if s.sensor_type == sensor_type]
    return [_legacy(machine, s, path, i, key) for i, s in enumerate(chosen)]


def _thermal(machine: Machine, chassis: str) -> Json:
    path = f"{chassis}/Thermal"
    return resource(
        path,
        "Thermal",
        "Thermal",
        "Thermal",
        Temperatures=_array(machine, f"{path}#/Temperatures", 0x01, "ReadingCelsius"),
        Fans=_array(machine, f"{path}#/Fans", 0x04, "Reading"),
        Status=status(),
    )


def _power(machine: Machine, chassis: str) -> Json:
    path = f"{chassis}/Power"
    return resource(
        path,
        "Power",
        "Power",
        "Power",
        Voltages=_array(machine, f"{path}#/Voltages", 0x02, "ReadingVolts"),
        Status=status(),
    )


def _spec(machine: Machine, number: int) -> SensorSpec:
    """The machine's sensor by number, at each request as the IPMI BMC looks it up."""
    return next(s for s in machine.sensors if s.number == number)


def _sensor(machine: Machine, number: int, path: str) -> Json:
    spec = _spec(machine, number)
    kind, units = _KINDS[spec.sensor_type]
    return resource(
        path,
        "Sensor",
        ident(spec),
        spec.name,
        Reading=reading(machine, spec),
        ReadingType=kind,
        ReadingUnits=units,
        PhysicalContext=_CONTEXTS.get(spec.entity, "SystemBoard"),
        Thresholds={
            "LowerCritical": {"Reading": spec.lower_critical},
            "LowerCaution": {"Reading": spec.lower_noncritical},
            "UpperCaution": {"Reading": spec.upper_noncritical},
            "UpperCritical": {"Reading": spec.upper_critical},
        },
        Status=_status(machine, spec),
    )


def _fan(machine: Machine, number: int, path: str, data_source: str) -> Json:
    spec = _spec(machine, number)
    return resource(
        path,
        "Fan",
        ident(spec),
        spec.name,
        PhysicalContext="Fan",
        # The speed excerpt names the Sensor it is read from, as DSP0268 has it.
        SpeedPercent={"DataSourceUri": data_source, "SpeedRPM": reading(machine, spec)},
        Status=_status(machine, spec),
    )
