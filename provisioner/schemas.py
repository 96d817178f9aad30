"""What the API accepts and returns. Input models forbid unknown fields so that a typo
is an error, not a silently ignored setting."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

# Re-exported: the catalog's models live in catalog_schemas.py.
from provisioner.bmc.probe import DEFAULT_PORTS
from provisioner.catalog_schemas import AnswerTemplate as AnswerTemplate
from provisioner.catalog_schemas import Handoff as Handoff
from provisioner.catalog_schemas import ImageIn as ImageIn
from provisioner.catalog_schemas import ImageOut as ImageOut
from provisioner.catalog_schemas import ImagePatch as ImagePatch
from provisioner.catalog_schemas import OsFamily as OsFamily
from provisioner.catalog_schemas import RoleIn as RoleIn
from provisioner.catalog_schemas import RoleOut as RoleOut
from provisioner.catalog_schemas import RolePatch as RolePatch
from provisioner.lifecycle import Action, State
from provisioner.patches import Keep
from provisioner.schema_types import (
    JSON_NUMBER,
    BmcDriverChoice,
    BmcPassword,
    BmcRetries,
    BmcTimeout,
    BmcUser,
    CipherSuite,
    Host,
    JsonFloat,
    JsonInt,
    Mac,
    NodeName,
    Port,
    RackUnit,
    UtcDatetime,
)

# Re-exported: the names callers have always imported from here.
from provisioner.schema_types import RackName as RackName
from provisioner.schema_types import Scope as Scope
from provisioner.schema_types import Slug as Slug
from provisioner.schema_types import Strict as Strict


class BmcIn(Strict):
    driver: BmcDriverChoice = Field(
        default="ipmi",
        description="auto: probe Redfish (HTTPS /redfish/v1), then IPMI, and store the "
        "driver (and port) that answered.",
    )
    address: Host
    port: Port | None = Field(
        default=None,
        description="623 for IPMI, 443 for Redfish when left out; with auto, the port "
        "both protocols are tried on.",
    )
    username: BmcUser
    password: BmcPassword
    timeout: BmcTimeout | None = None
    retries: BmcRetries | None = None
    cipher_suite: CipherSuite | None = None
    tls_verify: bool | None = Field(
        default=None,
        description="false: do not check an HTTPS BMC's certificate at all (logged); "
        "null: verify against the CA bundle, else pin on first contact.",
    )

    @model_validator(mode="after")
    def _default_port(self) -> BmcIn:
        if self.port is None and self.driver in DEFAULT_PORTS:
            # Past the model's __setattr__: a default is not a port the caller gave,
            # which the conflict checks tell apart (model_fields_set).
            object.__setattr__(self, "port", DEFAULT_PORTS[self.driver])
        return self


class BmcPatch(Strict):
    driver: Keep[BmcDriverChoice] = Field(
        default=None,
        description="auto: probe Redfish, then IPMI, and store the driver (and port) that "
        "answered.",
    )
    address: Keep[Host] = None
    port: Keep[Port] = None
    username: Keep[BmcUser] = None
    password: Keep[BmcPassword] = None
    timeout: BmcTimeout | None = None
    retries: BmcRetries | None = None
    cipher_suite: CipherSuite | None = None
    tls_verify: bool | None = Field(
        default=None, description="false: do not check the certificate; null: verify."
    )


class BmcOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    driver: str
    address: str
    port: int
    username: str
    timeout: float | None = Field(description="null: the service default")
    retries: int | None
    cipher_suite: int | None
    tls_verify: bool | None = Field(
        default=None, description="false: the certificate is not checked; null: verified."
    )
    tls_fingerprint: str | None = Field(
        default=None, description="The certificate pinned on first contact (sha256:<hex>)."
    )


Fingerprint = Annotated[
    str,
    Field(
        pattern=r"^(sha256:|SHA256:)?([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$",
        description="sha256: and the SHA-256 of the certificate (hex, colons allowed).",
    ),
]


class AcceptCertificateIn(Strict):
    fingerprint: Fingerprint | None = Field(
        default=None,
        description="The certificate you expect the BMC to present; refused with 409 if "
        "it presents another.",
    )


class AcceptCertificateOut(BaseModel):
    previous: str | None = Field(description="The certificate pinned until now.")
    fingerprint: str = Field(description="The certificate pinned from now on.")


class NicIn(Strict):
    mac: Mac
    pxe: bool = False


class NicOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    mac: str
    pxe: bool


def _check_nics(nics: list[NicIn] | None) -> list[NicIn] | None:
    if not nics:
        return nics
    seen: set[str] = set()
    for nic in nics:
        if nic.mac in seen:
            raise ValueError(f"MAC {nic.mac} is listed twice")
        seen.add(nic.mac)
    if not any(nic.pxe for nic in nics):
        # A node boots from one NIC; without a choice, the first one is it.
        nics = [nics[0].model_copy(update={"pxe": True}), *nics[1:]]
    return nics


class NodeCreate(Strict):
    name: NodeName
    rack: RackName | None = None
    rack_unit: RackUnit | None = None
    role: Slug | None = None
    hardware_profile: Slug | None = None
    image: Slug | None = None
    bmc: BmcIn
    nics: list[NicIn] = Field(default_factory=list, max_length=16)

    _nics = field_validator("nics")(_check_nics)


class NodePatch(Strict):
    """Fields left out are unchanged; ``nics`` replaces the whole list."""

    name: Keep[NodeName] = None
    rack: RackName | None = None
    rack_unit: RackUnit | None = None
    role: Slug | None = None
    hardware_profile: Slug | None = None
    image: Slug | None = None
    bmc: Keep[BmcPatch] = None
    nics: Keep[Annotated[list[NicIn], Field(max_length=16)]] = None

    _nics = field_validator("nics")(_check_nics)


class NodeOut(BaseModel):
    id: uuid.UUID
    name: str
    rack: str | None
    rack_unit: int | None
    role: str | None
    hardware_profile: str | None
    image: str | None
    state: str
    failed_from: str | None
    power_state: str
    target_power: str | None = Field(description="A power action not yet carried out.")
    power_reason: str | None
    power_checked_at: UtcDatetime | None
    maintenance: bool
    maintenance_reason: str | None
    last_error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    version: int
    bmc: BmcOut | None
    nics: list[NicOut]
    allowed_actions: list[str]


class NodePage(BaseModel):
    items: list[NodeOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ActionRequest(Strict):
    reason: Annotated[str, Field(max_length=255)] | None = None
    role: Slug | None = None
    image: Slug | None = None
    skip_wipe: bool = Field(
        default=False,
        description="release only: return the node to ready without erasing its disks. "
        "Without it a release wipes with the wipe image (PROVISIONER_WIPE_KERNEL_URL and "
        "PROVISIONER_WIPE_INITRD_URL) when set, else with the deploy agent "
        "(provisioner agent build), and is refused when there is neither.",
    )


def _one_of(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema for "at least one of these fields, given and not null"."""
    return {"anyOf": [{"required": [n], "properties": {n: s}} for n, s in fields.items()]}


class Selection(Strict):
    """Which nodes a bulk action applies to: every filter given must match, and at least
    one must be given."""

    model_config = ConfigDict(
        json_schema_extra=_one_of(
            {
                "names": {"type": "array"},
                "rack": {"type": "string"},
                "role": {"type": "string"},
                "state": {"type": "string"},
            }
        )
    )

    names: Annotated[list[NodeName], Field(min_length=1, max_length=10_000)] | None = None
    rack: RackName | None = None
    role: Slug | None = None
    state: State | None = None

    @model_validator(mode="after")
    def _not_everything(self) -> Selection:
        if not (self.names or self.rack or self.role or self.state):
            raise ValueError("select nodes by names, rack, role or state (at least one)")
        return self


class BulkActionRequest(ActionRequest):
    action: Action
    selection: Selection
    max_in_flight: Annotated[int, Field(ge=1, le=10_000), JSON_NUMBER] | None = Field(
        default=None,
        description="Installations of this request in flight at once (provision, reimage, "
        "release); the service-wide and per-rack limits apply as well.",
    )


class Refusal(BaseModel):
    name: str
    reason: str


class BulkActionOut(BaseModel):
    batch_id: uuid.UUID | None = Field(description="Set when max_in_flight was given.")
    accepted: list[str]
    refused: list[Refusal]


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: UtcDatetime
    actor: str
    kind: str
    from_state: str | None
    to_state: str | None
    message: str


class WipeOut(BaseModel):
    """One disk's wipe, as the deploy agent reported it."""

    model_config = ConfigDict(from_attributes=True)

    disk: str
    method: str = Field(description="metadata or full (PROVISIONER_WIPE_POLICY).")
    bytes: int = Field(description="Bytes written with zeros.")
    seconds: float
    ok: bool
    verified: str = Field(description="How the zeros were checked, and what was found.")
    message: str
    deployment_id: uuid.UUID | None
    created_at: UtcDatetime


class ImportResult(BaseModel):
    created: int = Field(description="Nodes the manifest added.")
    adopted: int = Field(
        description="Discovered nodes a manifest row named by MAC and took over (same id, "
        "timeline kept)."
    )
    nodes: list[NodeOut]


# ---- a node's BMC, asked directly ----------------------------------------------------


class PowerOut(BaseModel):
    power_state: str


class BootDeviceIn(Strict):
    device: Literal["network", "disk"]
    persistent: StrictBool = False
    uefi: Annotated[
        StrictBool | None, Field(description="null: as the node's hardware profile says")
    ] = None


class BootDeviceOut(BaseModel):
    device: str
    persistent: bool
    uefi: bool


class InventoryOut(BaseModel):
    source: str
    collected_at: UtcDatetime
    hardware_profile: str | None
    facts: dict[str, Any]


# ---- the boot network ----------------------------------------------------------------


class CallbackOut(BaseModel):
    status: str = Field(description="What was recorded.")


class TftpTransfer(BaseModel):
    """One finished transfer, as the pxe process reports it."""

    client: str
    server: str = ""
    file: str
    bytes: JsonInt
    duration: JsonFloat
    result: str


class TftpTrace(BaseModel):
    transfers: list[TftpTransfer] = Field(max_length=1000)


class DhcpExchange(BaseModel):
    """One answer of the DHCP server, as the pxe process read it from dnsmasq's log."""

    mac: Mac
    interface: str = Field(default="", max_length=64)
    kind: Literal["ack", "nak", "proxy"]
    address: str = Field(default="", max_length=45)
    vendor_class: str = Field(default="", max_length=128)
    user_class: str = Field(default="", max_length=128)
    bootfile: str = Field(default="", max_length=300)
    note: str = Field(default="", max_length=128)


class DhcpTrace(BaseModel):
    exchanges: list[DhcpExchange] = Field(max_length=1000)


class BootHopOut(BaseModel):
    time: str
    client: str
    mac: str | None
    kind: str
    detail: str


class TokenIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    scope: Scope
    expires_in_days: Annotated[int, Field(ge=1, le=3650), JSON_NUMBER] | None = None


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    scope: str
    prefix: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once; only its hash is stored.")


# ---- hand-off ------------------------------------------------------------------------

Certname = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._-]+$")]


class AutosignIn(Strict):
    certname: Certname
    challenge: Annotated[str, Field(max_length=255)] | None = None
    pp_role: Annotated[str, Field(max_length=255)] | None = None


class AutosignOut(BaseModel):
    sign: bool
    reason: str
