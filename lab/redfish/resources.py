"""The service-wide resources of one Redfish BMC: the service root, Chassis (its sensors
are `lab.redfish.sensors`'), the Manager (the BMC itself, its NIC and, in the Dell
dialect, its virtual media), the session, update and task services. The system subtree
is `lab.redfish.system`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from lab.machine import Machine
from lab.redfish.dialects import Traits
from lab.redfish.hardware import (
    BIOS_RELEASE_DATE,
    BIOS_VERSION,
    BMC_FIRMWARE_VERSION,
    BMC_MODEL,
    Hardware,
)
from lab.redfish.odata import ROOT, Json, collection, link, resource, status
from lab.redfish.sensors import chassis_links, sensor_routes
from lab.redfish.tasks import TASKS

SESSIONS = f"{ROOT}/SessionService/Sessions"
# The top-level resources, as the service root and the OData service document list them.
TOPS = {
    "Systems": f"{ROOT}/Systems",
    "Chassis": f"{ROOT}/Chassis",
    "Managers": f"{ROOT}/Managers",
    "SessionService": f"{ROOT}/SessionService",
    "TaskService": f"{ROOT}/TaskService",
    "UpdateService": f"{ROOT}/UpdateService",
}
_FIRMWARE = f"{ROOT}/UpdateService/FirmwareInventory"


def service_routes(
    machine: Machine,
    hardware: Hardware,
    traits: Traits,
    bmc_address: str,
    session_timeout: float,
) -> dict[str, Callable[[], Json]]:
    """Every service-wide resource path and what builds its payload."""
    chassis = f"{ROOT}/Chassis/{traits.chassis_id}"
    manager = f"{ROOT}/Managers/{traits.manager_id}"
    system = f"{ROOT}/Systems/{traits.system_id}"
    routes: dict[str, Callable[[], Json]] = {
        ROOT: lambda: _service_root(machine, traits),
        TOPS["Chassis"]: lambda: collection(
            TOPS["Chassis"], "Chassis", "Chassis Collection", [chassis]
        ),
        chassis: lambda: _chassis(machine, traits, chassis, system, manager),
        TOPS["Managers"]: lambda: collection(
            TOPS["Managers"], "Manager", "Manager Collection", [manager]
        ),
        manager: lambda: _manager(machine, traits, manager, system, chassis),
        f"{manager}/EthernetInterfaces": lambda: collection(
            f"{manager}/EthernetInterfaces",
            "EthernetInterface",
            "Manager Ethernet Interface Collection",
            [f"{manager}/EthernetInterfaces/1"],
        ),
        f"{manager}/EthernetInterfaces/1": lambda: _bmc_nic(hardware, manager, bmc_address),
        TOPS["SessionService"]: lambda: resource(
            TOPS["SessionService"],
            "SessionService",
            "SessionService",
            "Session Service",
            ServiceEnabled=True,
            SessionTimeout=int(session_timeout),
            Sessions=link(SESSIONS),
            Status=status(),
        ),
        TOPS["UpdateService"]: lambda: resource(
            TOPS["UpdateService"],
            "UpdateService",
            "UpdateService",
            "Update Service",
            ServiceEnabled=False,  # the lab's firmware never changes
            FirmwareInventory=link(_FIRMWARE),
            Status=status(),
        ),
        _FIRMWARE: lambda: collection(
            _FIRMWARE,
            "SoftwareInventory",
            "Firmware Inventory Collection",
            [f"{_FIRMWARE}/BIOS", f"{_FIRMWARE}/BMC"],
        ),
        f"{_FIRMWARE}/BIOS": lambda: _firmware(
            "BIOS", "BIOS", BIOS_VERSION, system, BIOS_RELEASE_DATE
        ),
        f"{_FIRMWARE}/BMC": lambda: _firmware("BMC", "BMC Firmware", BMC_FIRMWARE_VERSION, manager),
        TOPS["TaskService"]: lambda: resource(
            TOPS["TaskService"],
            "TaskService",
            "TaskService",
            "Task Service",
            ServiceEnabled=True,
            CompletedTaskOverWritePolicy="Oldest",
            LifeCycleEventOnTaskStateChange=False,
            Tasks=link(TASKS),
            Status=status(),
        ),
    }
    routes.update(sensor_routes(machine, traits, chassis))
    if traits.virtual_media:
        media = f"{manager}/VirtualMedia"
        routes[media] = lambda: collection(
            media,
            "VirtualMedia",
            "Virtual Media Collection",
            [f"{media}/CD", f"{media}/RemovableDisk"],
        )
        routes[f"{media}/CD"] = lambda: _virtual_media(f"{media}/CD", "CD", ["CD", "DVD"])
        routes[f"{media}/RemovableDisk"] = lambda: _virtual_media(
            f"{media}/RemovableDisk", "RemovableDisk", ["USBStick"]
        )
    return routes


def _service_root(machine: Machine, traits: Traits) -> Json:
    features: Json = {}
    if traits.expand_query:
        # $expand=. and * one level deep; ~ (Links only) is not served.
        expand = {"ExpandAll": True, "NoLinks": True, "Links": False, "Levels": True}
        features["ProtocolFeaturesSupported"] = {"ExpandQuery": {**expand, "MaxLevels": 1}}
    # With the trailing slash, as the DMTF's own mock-ups and most BMCs write it.
    return resource(
        f"{ROOT}/",
        "ServiceRoot",
        "RootService",
        "Root Service",
        RedfishVersion="1.11.0",
        UUID=str(machine.uuid),
        Vendor=machine.inventory.vendor,
        Product=BMC_MODEL,
        **{name: link(path) for name, path in TOPS.items()},
        Links={"Sessions": link(SESSIONS)},
        **features,
    )


def _chassis(machine: Machine, traits: Traits, path: str, system: str, manager: str) -> Json:
    inv = machine.inventory
    return resource(
        path,
        "Chassis",
        traits.chassis_id,
        "Chassis",
        ChassisType="RackMount",
        Manufacturer=inv.vendor,
        Model=inv.product,
        SerialNumber=inv.serial,
        PartNumber=inv.part_number,
        AssetTag=inv.asset_tag,
        PowerState="On" if machine.power_on else "Off",
        Status=status(),
        **chassis_links(traits, path),
        Links={"ComputerSystems": [link(system)], "ManagedBy": [link(manager)]},
    )


def _manager(machine: Machine, traits: Traits, path: str, system: str, chassis: str) -> Json:
    extra: Json = {}
    if traits.virtual_media:
        extra["VirtualMedia"] = link(f"{path}/VirtualMedia")
    return resource(
        path,
        "Manager",
        traits.manager_id,
        "Manager",
        ManagerType="BMC",
        Model=BMC_MODEL,
        FirmwareVersion=BMC_FIRMWARE_VERSION,
        UUID=str(machine.uuid),
        PowerState="On",  # the BMC runs on standby power
        Status=status(),
        EthernetInterfaces=link(f"{path}/EthernetInterfaces"),
        Links={"ManagerForServers": [link(system)], "ManagerForChassis": [link(chassis)]},
        **extra,
    )


def _bmc_nic(hardware: Hardware, manager: str, address: str) -> Json:
    ipv4 = []
    if address.count(".") == 3:
        ipv4.append({"Address": address, "SubnetMask": "255.255.255.0", "AddressOrigin": "Static"})
    return resource(
        f"{manager}/EthernetInterfaces/1",
        "EthernetInterface",
        "1",
        "Manager Ethernet Interface",
        MACAddress=hardware.bmc_mac,
        PermanentMACAddress=hardware.bmc_mac,
        SpeedMbps=1000,
        FullDuplex=True,
        InterfaceEnabled=True,
        LinkStatus="LinkUp",
        IPv4Addresses=ipv4,
        Status=status(),
    )


def _firmware(
    ident: str, name: str, version: str, target: str, released: str | None = None
) -> Json:
    fields: Json = {"Version": version, "Updateable": False, "Status": status()}
    if released is not None:
        fields["ReleaseDate"] = released
    return resource(
        f"{_FIRMWARE}/{ident}",
        "SoftwareInventory",
        ident,
        name,
        Manufacturer="Provisioner Lab",
        RelatedItem=[link(target)],
        **fields,
    )


def _virtual_media(path: str, ident: str, media_types: list[str]) -> Json:
    return resource(
        path,
        "VirtualMedia",
        ident,
        f"Virtual {ident}",
        MediaTypes=media_types,
        Image=None,
        Inserted=False,
        WriteProtected=True,
        ConnectedVia="NotConnected",
    )
