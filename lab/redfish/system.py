"""The ComputerSystem of a Redfish BMC and what hangs under it (processors, memory,
storage and drives, Ethernet interfaces), read from the emulated machine at each
request, and the boot override, which is the machine's IPMI boot flags seen through
Redfish: a change on either side shows on the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lab.machine import BootDevice, BootFlags, Machine
from lab.redfish import errors
from lab.redfish.dialects import Traits
from lab.redfish.hardware import BIOS_VERSION, CPU_MODEL, Dimm, Drive, Hardware
from lab.redfish.odata import ROOT, Json, collection, link, resource, status

RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle")

# Redfish BootSourceOverrideTarget ↔ the IPMI boot device selector the machine keeps.
# UefiHttp is absent: the emulated firmware boots from the network over TFTP only.
_TARGETS: dict[str, BootDevice] = {
    "None": BootDevice.NONE,
    "Pxe": BootDevice.PXE,
    "Hdd": BootDevice.DISK,
    "Cd": BootDevice.CDROM,
    "Floppy": BootDevice.FLOPPY,
    "BiosSetup": BootDevice.BIOS_SETUP,
    "Diags": BootDevice.DIAGNOSTIC,
    "RemoteDrive": BootDevice.REMOTE_DISK,
}
_DEVICES = {device: target for target, device in _TARGETS.items()}
# Selectors without a Redfish name of their own read as the nearest one.
_DEVICES.update(
    {
        BootDevice.DISK_SAFE: "Hdd",
        BootDevice.REMOTE_CDROM: "Cd",
        BootDevice.REMOTE_FLOPPY: "Floppy",
        BootDevice.REMOTE_MEDIA: "Cd",
    }
)
ENABLED_VALUES = ("Disabled", "Once", "Continuous")
MODE_VALUES = ("Legacy", "UEFI")
_WRITABLE_BOOT = (
    "BootSourceOverrideEnabled",
    "BootSourceOverrideTarget",
    "BootSourceOverrideMode",
)


def boot_of(flags: BootFlags) -> Json:
    """The System's ``Boot`` object for the machine's boot flags."""
    target = _DEVICES.get(BootDevice(flags.device), "None") if flags.valid else "None"
    enabled = "Disabled" if not flags.valid else "Continuous" if flags.persistent else "Once"
    return {
        "BootSourceOverrideEnabled": enabled,
        "BootSourceOverrideEnabled@Redfish.AllowableValues": list(ENABLED_VALUES),
        "BootSourceOverrideTarget": target,
        "BootSourceOverrideTarget@Redfish.AllowableValues": list(_TARGETS),
        "BootSourceOverrideMode": "UEFI" if flags.uefi else "Legacy",
        "BootSourceOverrideMode@Redfish.AllowableValues": list(MODE_VALUES),
    }


def patched_boot(flags: BootFlags, patch: object) -> BootFlags:
    """The boot flags after a PATCH of ``Boot``, or a 400 naming the first bad value. A
    target given while the override is disabled applies once, as most BMCs do."""
    if not isinstance(patch, dict):
        raise errors.RedfishError(
            400, "MalformedJSON", "The property Boot must be an object.", ("Boot",)
        )
    current = boot_of(flags)
    for key in patch:
        if key not in _WRITABLE_BOOT:
            raise errors.RedfishError(
                400,
                "PropertyNotWritable",
                f"The property Boot/{key} is a read only property and cannot be assigned a value.",
                (f"Boot/{key}",),
            )
    target = patch.get("BootSourceOverrideTarget", current["BootSourceOverrideTarget"])
    if target not in _TARGETS:
        raise errors.value_not_in_list(target, "BootSourceOverrideTarget")
    default_enabled = current["BootSourceOverrideEnabled"]
    if "BootSourceOverrideTarget" in patch and default_enabled == "Disabled":
        default_enabled = "Once"
    enabled = patch.get("BootSourceOverrideEnabled", default_enabled)
    if enabled not in ENABLED_VALUES:
        raise errors.value_not_in_list(enabled, "BootSourceOverrideEnabled")
    mode = patch.get("BootSourceOverrideMode", current["BootSourceOverrideMode"])
    if mode not in MODE_VALUES:
        raise errors.value_not_in_list(mode, "BootSourceOverrideMode")
    device = _TARGETS[target]
    return BootFlags(
        valid=enabled != "Disabled" and device is not BootDevice.NONE,
        persistent=enabled == "Continuous",
        uefi=mode == "UEFI",
        device=device,
    )


def system_routes(
    machine: Machine, hardware: Hardware, traits: Traits
) -> dict[str, Callable[[], Json]]:
    """Every resource path of the system subtree and what builds its payload."""
    base = f"{ROOT}/Systems/{traits.system_id}"
    cpus = [f"CPU{n + 1}" for n in range(hardware.sockets)]
    dimms = [f"DIMM{d.slot + 1}" for d in hardware.dimms]
    nics = [f"NIC{n + 1}" for n in range(len(machine.macs))]
    storage = f"{base}/Storage/1"
    routes: dict[str, Callable[[], Json]] = {
        f"{ROOT}/Systems": lambda: collection(
            f"{ROOT}/Systems", "ComputerSystem", "Computer System Collection", [base]
        ),
        base: lambda: _system(machine, hardware, traits, base),
        f"{base}/Processors": lambda: collection(
            f"{base}/Processors",
            "Processor",
            "Processors Collection",
            [f"{base}/Processors/{c}" for c in cpus],
        ),
        f"{base}/Memory": lambda: collection(
            f"{base}/Memory", "Memory", "Memory Collection", [f"{base}/Memory/{d}" for d in dimms]
        ),
        f"{base}/Storage": lambda: collection(
            f"{base}/Storage", "Storage", "Storage Collection", [storage]
        ),
        storage: lambda: _storage(hardware, storage),
        f"{base}/EthernetInterfaces": lambda: collection(
            f"{base}/EthernetInterfaces",
            "EthernetInterface",
            "Ethernet Interface Collection",
            [f"{base}/EthernetInterfaces/{n}" for n in nics],
        ),
    }
    for socket, ident in enumerate(cpus):
        path = f"{base}/Processors/{ident}"
        routes[path] = functools.partial(_processor, hardware, path, ident, socket)
    for dimm, ident in zip(hardware.dimms, dimms, strict=True):
        path = f"{base}/Memory/{ident}"
        routes[path] = functools.partial(_dimm, machine, dimm, path, ident)
    for drive in hardware.drives:
        path = f"{storage}/Drives/{drive.slot}"
        routes[path] = functools.partial(_drive, machine, drive, path)
    for mac, ident in zip(machine.macs, nics, strict=True):
        path = f"{base}/EthernetInterfaces/{ident}"
        routes[path] = functools.partial(_nic, machine, path, ident, mac)
    return routes


def _system(machine: Machine, hardware: Hardware, traits: Traits, base: str) -> Json:
    inv = machine.inventory
    health = status(health="OK")
    return resource(
        base,
        "ComputerSystem",
        traits.system_id,
        "System",
        SystemType="Physical",
        Manufacturer=inv.vendor,
        Model=inv.product,
        SerialNumber=inv.serial,
        SKU=inv.part_number,
        PartNumber=inv.part_number,
        AssetTag=inv.asset_tag,
        UUID=str(machine.uuid),
        BiosVersion=BIOS_VERSION,
        PowerState="On" if machine.power_on else "Off",
        Boot=boot_of(machine.boot),
        ProcessorSummary={
            "Count": hardware.sockets,
            "LogicalProcessorCount": hardware.sockets
            * hardware.cores_per_socket
            * hardware.threads_per_core,
            "Model": CPU_MODEL,
            "Status": status(),
        },
        MemorySummary={"TotalSystemMemoryGiB": hardware.memory_gib, "Status": status()},
        Status={**health, "HealthRollup": "OK"},
        Processors=link(f"{base}/Processors"),
        Memory=link(f"{base}/Memory"),
        Storage=link(f"{base}/Storage"),
        EthernetInterfaces=link(f"{base}/EthernetInterfaces"),
        Links={
            "Chassis": [link(f"{ROOT}/Chassis/{traits.chassis_id}")],
            "ManagedBy": [link(f"{ROOT}/Managers/{traits.manager_id}")],
        },
        Actions={
            "#ComputerSystem.Reset": {
                "target": f"{base}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
            }
        },
    )


def _processor(hardware: Hardware, path: str, ident: str, socket: int) -> Json:
    return resource(
        path,
        "Processor",
        ident,
        f"Processor {socket + 1}",
        Socket=f"CPU {socket + 1}",
        ProcessorType="CPU",
        ProcessorArchitecture="x86",
        InstructionSet="x86-64",
        Manufacturer="Provisioner Lab",
        Model=CPU_MODEL,
        MaxSpeedMHz=hardware.cpu_mhz,
        TotalCores=hardware.cores_per_socket,
        TotalThreads=hardware.cores_per_socket * hardware.threads_per_core,
        Status=status(),
    )


def _dimm(machine: Machine, dimm: Dimm, path: str, ident: str) -> Json:
    return resource(
        path,
        "Memory",
        ident,
        f"DIMM {dimm.slot + 1}",
        CapacityMiB=dimm.capacity_mib,
        MemoryDeviceType="DDR4",
        MemoryType="DRAM",
        OperatingSpeedMhz=dimm.speed_mhz,
        Manufacturer=machine.inventory.vendor,
        PartNumber=dimm.part_number,
        SerialNumber=dimm.serial,
        MemoryLocation={"Socket": dimm.slot // 4 + 1, "Channel": dimm.slot % 4 + 1, "Slot": 1},
        Status=status(),
    )


def _drive(machine: Machine, drive: Drive, path: str) -> Json:
    return resource(
        path,
        "Drive",
        str(drive.slot),
        f"Disk {drive.slot}",
        CapacityBytes=drive.capacity_bytes,
        MediaType=drive.media_type,
        Manufacturer=machine.inventory.vendor,
        Model=drive.model,
        SerialNumber=drive.serial,
        Protocol="SATA",
        BlockSizeBytes=512,
        Status=status(),
    )


def _storage(hardware: Hardware, path: str) -> Json:
    drives = [link(f"{path}/Drives/{d.slot}") for d in hardware.drives]
    return resource(
        path,
        "Storage",
        "1",
        "Storage",
        Drives=drives,
        **{"Drives@odata.count": len(drives)},
        Status={**status(), "HealthRollup": "OK"},
    )


def _nic(machine: Machine, path: str, ident: str, mac: str) -> Json:
    fields: dict[str, Any] = {
        "MACAddress": mac,
        "PermanentMACAddress": mac,
        "SpeedMbps": 25000,
        "FullDuplex": True,
        "InterfaceEnabled": True,
        "LinkStatus": "LinkUp" if machine.power_on else "LinkDown",
        "Status": status(),
    }
    return resource(path, "EthernetInterface", ident, f"Ethernet Interface {ident}", **fields)
