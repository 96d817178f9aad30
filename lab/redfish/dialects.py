"""Redfish dialects: how the BMCs of different vendors differ where a client notices.
Each lab node's Redfish BMC speaks one, chosen when the lab starts.

- ``generic``: what the specification allows a client to expect (ids as OpenBMC names
  them: ``system``, ``chassis``, ``bmc``);
- ``dell`` (iDRAC-like): a PATCH of the boot override without ``If-Match`` is refused
  with 428; virtual media live under the Manager; ids ``System.Embedded.1`` and
  ``iDRAC.Embedded.1``;
- ``hpe`` (iLO-like): a power action is answered 202 with a task monitor, and the power
  changes when the task completes, a little later; sensors in the Chassis' ``Sensors``
  collection instead of the legacy Thermal and Power (as iLO 6 and other Redfish
  2020.4+ firmware), and ``$expand`` of it; ids ``1``;
- ``supermicro``: a session is required, basic authentication is refused; ids ``1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Dialect(StrEnum):
    GENERIC = "generic"
    DELL = "dell"
    HPE = "hpe"
    SUPERMICRO = "supermicro"


@dataclass(frozen=True)
class Traits:
    system_id: str
    chassis_id: str
    manager_id: str
    # The boot override PATCH needs the System's ETag in If-Match (428 without).
    patch_needs_if_match: bool = False
    virtual_media: bool = False  # a VirtualMedia collection under the Manager
    power_through_task: bool = False  # 202 and a task monitor for every power action
    basic_auth: bool = True  # False: only a session's X-Auth-Token is accepted
    # Sensors in the Chassis' Sensors collection (with ThermalSubsystem and
    # PowerSubsystem), no legacy Thermal and Power.
    sensors_collection: bool = False
    # $expand=. and * with $levels=1, advertised in the service root's
    # ProtocolFeaturesSupported; other dialects answer 501 to $expand.
    expand_query: bool = False


# How long an HPE-like BMC takes to carry out a power action it accepted: long enough
# that a client which does not follow the task sees the old power state.
TASK_SECONDS = 1.0

TRAITS: dict[Dialect, Traits] = {
    Dialect.GENERIC: Traits("system", "chassis", "bmc"),
    Dialect.DELL: Traits(
        "System.Embedded.1",
        "System.Embedded.1",
        "iDRAC.Embedded.1",
        patch_needs_if_match=True,
        virtual_media=True,
    ),
    Dialect.HPE: Traits(
        "1", "1", "1", power_through_task=True, sensors_collection=True, expand_query=True
    ),
    Dialect.SUPERMICRO: Traits("1", "1", "1", basic_auth=False),
}


def parse_dialect(text: str) -> Dialect:
    try:
        return Dialect(text.strip().lower())
    except ValueError:
        known = ", ".join(d.value for d in Dialect)
        raise ValueError(f"unknown Redfish dialect {text!r}; known: {known}") from None
