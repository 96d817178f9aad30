"""The OData side of every Redfish payload: the schema versions this lab implements,
``@odata.id``/``@odata.type``/``@odata.context`` on each resource, collections, links,
and the two documents that describe the service (``$metadata`` and the service
document), both made from the same table so that they name exactly the types the
payloads use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import quoteattr

ROOT = "/redfish/v1"
METADATA = f"{ROOT}/$metadata"
_SCHEMA_BASE = "http://redfish.dmtf.org/schemas/v1"

# Schema → the version of it the lab's payloads follow; each property used exists in it.
VERSIONS: dict[str, str] = {
    "ServiceRoot": "v1_5_0",
    "ComputerSystem": "v1_13_0",
    "Processor": "v1_10_0",
    "Memory": "v1_10_0",
    "Storage": "v1_9_0",
    "Drive": "v1_12_0",
    "EthernetInterface": "v1_6_0",
    "Chassis": "v1_15_0",  # 1.15: ThermalSubsystem and PowerSubsystem
    "Thermal": "v1_7_0",
    "Power": "v1_7_0",
    "Sensor": "v1_2_0",
    "ThermalSubsystem": "v1_0_0",
    "PowerSubsystem": "v1_0_0",
    "Fan": "v1_0_0",
    "Manager": "v1_9_0",
    "VirtualMedia": "v1_3_0",
    "SessionService": "v1_1_8",
    "Session": "v1_3_0",
    "UpdateService": "v1_8_0",
    "SoftwareInventory": "v1_3_0",
    "TaskService": "v1_2_0",
    "Task": "v1_5_0",
}
COLLECTIONS = (
    "ComputerSystem",
    "Processor",
    "Memory",
    "Storage",
    "EthernetInterface",
    "Chassis",
    "Sensor",
    "Fan",
    "Manager",
    "VirtualMedia",
    "Session",
    "SoftwareInventory",
    "Task",
)
# Referenced by every payload without being a resource of its own.
_SUPPORT = {
    "Resource": ("Resource", "Resource.v1_0_0"),
    "RedfishExtensions": ("RedfishExtensions.v1_0_0",),
    "Message": ("Message", "Message.v1_1_1"),
}

Json = dict[str, Any]


def link(path: str) -> Json:
    return {"@odata.id": path}


def resource(path: str, schema: str, ident: str, name: str, **fields: Any) -> Json:
    """A resource of ``schema`` at ``path``: the OData annotations, Id and Name first."""
    return {
        "@odata.id": path,
        "@odata.type": f"#{schema}.{VERSIONS[schema]}.{schema}",
        "@odata.context": f"{METADATA}#{schema}.{schema}",
        "Id": ident,
        "Name": name,
        **fields,
    }


def collection(path: str, schema: str, name: str, members: list[str]) -> Json:
    kind = f"{schema}Collection"
    return {
        "@odata.id": path,
        "@odata.type": f"#{kind}.{kind}",
        "@odata.context": f"{METADATA}#{kind}.{kind}",
        "Name": name,
        "Members": [link(member) for member in members],
        "Members@odata.count": len(members),
    }


def status(state: str = "Enabled", health: str = "OK") -> Json:
    return {"State": state, "Health": health}


def expand(payload: Json, resolve: Callable[[str], Json | None], *, links: bool) -> Json:
    """``$expand`` one level (DSP0266): each reference ``{"@odata.id": path}`` in the
    payload replaced by the resource it names, the members of a collection among them;
    those under ``Links`` too when ``links`` (``*``), not for ``.``. A reference to
    nothing ``resolve`` knows stays a reference."""

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, list):
            return [walk(item, key) for item in value]
        if not isinstance(value, dict):
            return value
        if list(value) == ["@odata.id"]:
            found = resolve(str(value["@odata.id"]))
            return value if found is None else found
        if key == "Links" and not links:
            return value
        return {k: walk(v, k) for k, v in value.items()}

    return {k: walk(v, k) for k, v in payload.items()}


def metadata_document() -> str:
    """``$metadata``: a CSDL document that references the DMTF's schema files for every
    namespace the payloads use, and declares the service's entity container."""
    references: list[tuple[str, tuple[str, ...]]] = [
        (schema, (schema, f"{schema}.{version}")) for schema, version in VERSIONS.items()
    ]
    references += [(f"{schema}Collection", (f"{schema}Collection",)) for schema in COLLECTIONS]
    references += list(_SUPPORT.items())
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for document, namespaces in references:
        lines.append(f"  <edmx:Reference Uri={quoteattr(f'{_SCHEMA_BASE}/{document}_v1.xml')}>")
        for namespace in namespaces:
            alias = ' Alias="Redfish"' if namespace.startswith("RedfishExtensions") else ""
            lines.append(f"    <edmx:Include Namespace={quoteattr(namespace)}{alias}/>")
        lines.append("  </edmx:Reference>")
    container = f"ServiceRoot.{VERSIONS['ServiceRoot']}.ServiceContainer"
    lines += [
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        f'      <EntityContainer Name="Service" Extends="{container}"/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
    ]
    return "\n".join(lines) + "\n"


def service_document(tops: dict[str, str]) -> Json:
    """The OData service document: the service root and its top-level resources."""
    values = [{"name": "Service", "kind": "Singleton", "url": f"{ROOT}/"}]
    values += [{"name": name, "kind": "Singleton", "url": url} for name, url in tops.items()]
    return {"@odata.context": METADATA, "value": values}
