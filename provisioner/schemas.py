"""What the API accepts and returns. Input models forbid unknown fields so that a typo
is an error, not a silently ignored setting."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from provisioner.lifecycle import Action, State
from provisioner.patches import Keep
from provisioner.schema_types import (
    BmcDriver,
    BmcPassword,
    BmcRetries,
    BmcTimeout,
    BmcUser,
    CipherSuite,
    Host,
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
    driver: BmcDriver = "ipmi"
    address: Host
    port: Port = 623
    username: BmcUser
    password: BmcPassword
    timeout: BmcTimeout | None = None
    retries: BmcRetries | None = None
    cipher_suite: CipherSuite | None = None


class BmcPatch(Strict):
    driver: Keep[BmcDriver] = None
    address: Keep[Host] = None
    port: Keep[Port] = None
    username: Keep[BmcUser] = None
    password: Keep[BmcPassword] = None
    timeout: BmcTimeout | None = None
    retries: BmcRetries | None = None
    cipher_suite: CipherSuite | None = None


class BmcOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    driver: str
    address: str
    port: int
    username: str
    timeout: float | None = Field(description="null: the service default")
    retries: int | None
    cipher_suite: int | None


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
        "Without it a release needs the wipe image (PROVISIONER_WIPE_KERNEL_URL and "
        "PROVISIONER_WIPE_INITRD_URL).",
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
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
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
    persistent: bool = False
    uefi: Annotated[bool | None, Field(description="null: as the node's hardware profile says")] = (
        None
    )


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
    bytes: int
    duration: float
    result: str


class TftpTrace(BaseModel):
    transfers: list[TftpTransfer] = Field(max_length=1000)


class BootHopOut(BaseModel):
    time: str
    client: str
    mac: str | None
    kind: str
    detail: str


# How a provisioned node is handed over (provisioner/handoff): at once, when the role's
# webhook is acknowledged, or when Puppet first fetches its classification (ENC).
class Handoff(StrEnum):
    IMMEDIATE = "immediate"
    WEBHOOK = "webhook"
    ENC = "enc"


WebhookUrl = Annotated[str, Field(max_length=1024, pattern=r"^https?://[^\s/?#]+[^\s]*$")]
# Write-only: stored encrypted, never returned (RoleOut.webhook_secret_set says if set).
WebhookSecret = Annotated[SecretStr, Field(min_length=16, max_length=256)]
# exclude=True keeps it out of model_dump(), so it never reaches a row unencrypted.
_WRITE_ONLY = Field(default=None, exclude=True)


class RoleBase(Strict):
    name: Slug
    description: Annotated[str, Field(max_length=255)] = ""
    default_image: Slug | None = None
    auto_provision: bool = True
    puppet_environment: Slug = "production"
    puppet_classes: list[Annotated[str, Field(max_length=255)]] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    packages: list[Annotated[str, Field(max_length=255)]] = Field(default_factory=list)
    handoff: Handoff = Handoff.IMMEDIATE
    webhook_url: WebhookUrl | None = None


class RoleIn(RoleBase):
    model_config = ConfigDict(
        json_schema_extra={
            # handoff "webhook" needs both webhook fields (the validator below says so).
            "anyOf": [
                {"properties": {"handoff": {"enum": ["immediate", "enc"]}}},
                {
                    "required": ["webhook_url", "webhook_secret"],
                    "properties": {
                        "webhook_url": {"type": "string"},
                        "webhook_secret": {"type": "string"},
                    },
                },
            ]
        }
    )

    webhook_secret: WebhookSecret | None = _WRITE_ONLY

    @model_validator(mode="after")
    def _webhook_complete(self) -> RoleIn:
        if self.handoff is Handoff.WEBHOOK and (
            self.webhook_url is None or self.webhook_secret is None
        ):
            raise ValueError(
                "handoff 'webhook' needs webhook_url and webhook_secret (at least 16 "
                "characters; the receiver verifies the HMAC signature with it)"
            )
        return self


class RolePatch(Strict):
    """Fields left out are unchanged; null clears ``default_image`` and ``webhook_url``."""

    description: Keep[Annotated[str, Field(max_length=255)]] = None
    default_image: Slug | None = None
    auto_provision: Keep[bool] = None
    puppet_environment: Keep[Slug] = None
    puppet_classes: Keep[list[Annotated[str, Field(max_length=255)]]] = None
    parameters: Keep[dict[str, Any]] = None
    packages: Keep[list[Annotated[str, Field(max_length=255)]]] = None
    handoff: Keep[Handoff] = None
    webhook_url: WebhookUrl | None = None
    webhook_secret: Keep[WebhookSecret] = _WRITE_ONLY


class RoleOut(RoleBase):
    model_config = ConfigDict(from_attributes=True, extra="ignore")

    webhook_secret_set: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @field_validator("puppet_classes", "parameters", "packages", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # A PATCH with null stored JSON null here before such nulls were refused; such a
        # role reads as having none, instead of failing every listing of roles.
        if value is None:
            return {} if info.field_name == "parameters" else []
        return value


OsFamily = Literal["rhel", "fedora", "debian", "ubuntu"]
AnswerTemplate = Literal["kickstart", "preseed", "autoinstall"]


def _boot_location(value: str) -> str:
    if "://" not in value and ".." in value.split("/"):
        raise ValueError("a path in the images directory may not contain '..'")
    return value


# A kernel or initrd: a URL the machine fetches itself, or a path below the service's
# images directory (served at /boot/files/<path>).
BootLocation = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        pattern=r"^(https?://\S+|[A-Za-z0-9_][A-Za-z0-9._/-]*)$",
        description="http(s) URL, or a path in the images directory",
        # A path may not climb out of the images directory.
        json_schema_extra={"not": {"pattern": r"^([^:]*/)?\.\.(/[^:]*)?$"}},
    ),
    AfterValidator(_boot_location),
]


# The installers fetch packages over HTTP: empty means the answer template's default
# mirror (none for kickstart, which the catalog refuses by the renderer's rule).
RepoUrl = Annotated[str, Field(max_length=1024, pattern=r"^(https?://\S+)?$")]


class ImageIn(Strict):
    name: Slug
    os_family: OsFamily
    version: Annotated[str, Field(min_length=1, max_length=32)]
    kernel_url: BootLocation
    initrd_url: BootLocation
    repo_url: RepoUrl = ""
    answer_template: AnswerTemplate
    kernel_args: Annotated[str, Field(max_length=1024)] = ""


class ImagePatch(Strict):
    """Fields left out are unchanged; none may be null (an empty string clears
    ``repo_url`` and ``kernel_args``)."""

    os_family: Keep[OsFamily] = None
    version: Keep[Annotated[str, Field(min_length=1, max_length=32)]] = None
    kernel_url: Keep[BootLocation] = None
    initrd_url: Keep[BootLocation] = None
    repo_url: Keep[RepoUrl] = None
    answer_template: Keep[AnswerTemplate] = None
    kernel_args: Keep[Annotated[str, Field(max_length=1024)]] = None


class ImageOut(BaseModel):
    """Without ImageIn's patterns: an image stored under older rules must still read."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    os_family: OsFamily
    version: str
    kernel_url: str
    initrd_url: str
    repo_url: str
    answer_template: AnswerTemplate
    kernel_args: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


class TokenIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    scope: Scope
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None


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
