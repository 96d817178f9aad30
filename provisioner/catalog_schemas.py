"""What the API accepts and returns for roles and images (the catalog). Re-exported by
provisioner/schemas.py, where callers import them from."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from provisioner.patches import Keep
from provisioner.schema_types import Slug, Strict, UtcDatetime


# How a provisioned node is handed over (provisioner/handoff): at once, when the role's
# webhook is acknowledged, or when Puppet first fetches its classification (ENC).
class Handoff(StrEnum):
    IMMEDIATE = "immediate"
    WEBHOOK = "webhook"
    ENC = "enc"


# An http(s) URL without brackets in its host: a URL with one (an IPv6 literal, or a
# typo) is one Python's urlsplit may refuse when it is used, long after it was stored.
_HTTP_URL = r"https?://[^\s/?#\[\]]+([/?#]\S*)?"
WebhookUrl = Annotated[str, Field(max_length=1024, pattern=rf"^{_HTTP_URL}$")]
# Write-only: stored encrypted, never returned (RoleOut.webhook_secret_set says if set).
WebhookSecret = Annotated[SecretStr, Field(min_length=16, max_length=256)]
# exclude=True keeps it out of model_dump(), so it never reaches a row unencrypted.
_WRITE_ONLY = Field(default=None, exclude=True)


class RoleBase(Strict):
    name: Slug
    description: Annotated[str, Field(max_length=255)] = ""
    default_image: Slug | None = None
    auto_provision: StrictBool = True
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
    auto_provision: Keep[StrictBool] = None
    puppet_environment: Keep[Slug] = None
    puppet_classes: Keep[list[Annotated[str, Field(max_length=255)]]] = None
    parameters: Keep[dict[str, Any]] = None
    packages: Keep[list[Annotated[str, Field(max_length=255)]]] = None
    handoff: Keep[Handoff] = None
    webhook_url: WebhookUrl | None = None
    webhook_secret: Keep[WebhookSecret] = _WRITE_ONLY


class RoleOut(RoleBase):
    model_config = ConfigDict(from_attributes=True, extra="ignore")

    # As stored: a URL kept under the looser rule of earlier versions must still read.
    webhook_url: str | None = None
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


# Printable ASCII without spaces: it goes into kernel lines and answer files as it is.
ImageVersion = Annotated[
    str, Field(min_length=1, max_length=32, json_schema_extra={"pattern": r"^[\x21-\x7e]+$"})
]
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
        pattern=rf"^({_HTTP_URL}|[A-Za-z0-9_][A-Za-z0-9._/-]*)$",
        description="http(s) URL, or a path in the images directory",
        # A path may not climb out of the images directory.
        json_schema_extra={"not": {"pattern": r"^([^:]*/)?\.\.(/[^:]*)?$"}},
    ),
    AfterValidator(_boot_location),
]


# The installers fetch packages over HTTP: empty means the answer template's default
# mirror (none for kickstart, which the catalog refuses by the renderer's rule).
RepoUrl = Annotated[str, Field(max_length=1024, pattern=rf"^({_HTTP_URL})?$")]


class ImageIn(Strict):
    # Which template installs which family, and Anaconda's need of a repository: the
    # renderer's rules (boot/answers.py), refused with 422 when broken.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {
                        "answer_template": {"const": "kickstart"},
                        "os_family": {"enum": ["rhel", "fedora"]},
                        "repo_url": {"minLength": 1},
                    },
                    "required": ["repo_url"],
                },
                {
                    "properties": {
                        "answer_template": {"const": "preseed"},
                        "os_family": {"const": "debian"},
                    }
                },
                {
                    "properties": {
                        "answer_template": {"const": "autoinstall"},
                        "os_family": {"const": "ubuntu"},
                    }
                },
            ]
        }
    )

    name: Slug
    os_family: OsFamily
    version: ImageVersion
    kernel_url: BootLocation
    initrd_url: BootLocation
    repo_url: RepoUrl = ""
    answer_template: AnswerTemplate
    kernel_args: Annotated[str, Field(max_length=1024)] = ""


class ImagePatch(Strict):
    """Fields left out are unchanged; none may be null (an empty string clears
    ``repo_url`` and ``kernel_args``)."""

    os_family: Keep[OsFamily] = None
    version: Keep[ImageVersion] = None
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
