"""What a Redfish BMC tells of its machine beyond the FRU: processors, memory, drives,
firmware versions and the BMC's own NIC. IPMI FRU does not carry these, so they follow
from the machine's UUID (itself from the lab's seed): the same machine reports the same
hardware in every run, and machines differ from one another.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lab.machine import Machine

# As the IPMI BMC's Get Device ID reports it (lab/bmc.py: firmware 2.47).
BMC_FIRMWARE_VERSION = "2.47"
BMC_MODEL = "Lab BMC LB-1"
BIOS_VERSION = "VS1.1.4.2"
BIOS_RELEASE_DATE = "2024-01-15T00:00:00Z"
CPU_MODEL = "Lab Virtual CPU VC-16"


@dataclass(frozen=True)
class Dimm:
    slot: int
    capacity_mib: int
    serial: str
    part_number: str = "LAB-R16G-3200"
    speed_mhz: int = 3200


@dataclass(frozen=True)
class Drive:
    slot: int
    capacity_bytes: int
    media_type: str  # Redfish Drive.MediaType: "SSD" or "HDD"
    model: str
    serial: str


@dataclass(frozen=True)
class Hardware:
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    cpu_mhz: int
    dimms: tuple[Dimm, ...]
    drives: tuple[Drive, ...]
    bmc_mac: str

    @property
    def memory_gib(self) -> float:
        return sum(d.capacity_mib for d in self.dimms) / 1024


def hardware_of(machine: Machine) -> Hardware:
    rng = random.Random(f"{machine.uuid}/redfish")  # noqa: S311 - reproducible on purpose
    dimm_mib = rng.choice((8192, 16384, 32768))
    dimms = tuple(
        Dimm(slot, dimm_mib, f"DM{rng.randrange(16**8):08X}") for slot in range(rng.choice((4, 8)))
    )
    # The smaller drive first: the one a "smallest" root-disk hint picks.
    drives = (
        Drive(0, 480_103_981_056, "SSD", "Lab SSD LS-480", f"SSD{rng.randrange(16**8):08X}"),
        Drive(1, 3_840_755_982_336, "HDD", "Lab HDD LH-4000", f"HDD{rng.randrange(16**8):08X}"),
    )
    # Locally administered, unicast, and not in the lab machines' 52:54:00 range.
    mac = "02:1a:b0:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    return Hardware(
        sockets=2,
        cores_per_socket=rng.choice((8, 16)),
        threads_per_core=2,
        cpu_mhz=2600,
        dimms=dimms,
        drives=drives,
        bmc_mac=mac,
    )
