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
# "other": an OS none of the installers knows, which only a disk image can deploy (the
# lab's image, a Debian kernel with busybox, is one).
OsFamily = Literal["rhel", "fedora", "debian", "ubuntu", "other"]
AnswerTemplate = Literal["kickstart", "preseed", "autoinstall"]
# How an image reaches a disk: its installer (kernel, initrd, answer file), or the deploy
# agent writing image_url (docs/images.md).
Deploy = Literal["installer", "image"]
ImageFormat = Literal["raw", "raw.gz", "qcow2"]


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


def _image_location(value: str) -> str:
    path = value.removeprefix("file://") if value.startswith("file://") else value
    if "://" not in path and ".." in path.split("/"):
        raise ValueError("a path may not contain '..'")
    return value


# The disk image the service fetches, verifies and caches for the agent: an http(s) URL,
# a file of the service's machine (file:///absolute/path, taken as written: no
# %-escapes), or a path in the images directory.
ImageUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        pattern=rf"^({_HTTP_URL}|file:///[^\s?#:%]+|[A-Za-z0-9_][A-Za-z0-9._/-]*)$",
        description="http(s) URL, file:///absolute/path, or a path in the images directory",
        json_schema_extra={"not": {"pattern": r"^(file://)?([^:]*/)?\.\.(/[^:]*)?$"}},
    ),
    AfterValidator(_image_location),
]


def _sha256(value: str) -> str:
    return "sha256:" + value.removeprefix("sha256:").lower()


# The SHA-256 of the file at image_url as it is fetched (compressed, qcow2: as stored);
# plain hex is taken too and stored with its prefix.
Checksum = Annotated[
    str,
    Field(
        pattern=r"^(sha256:)?[0-9A-Fa-f]{64}$",
        description="sha256:<64 hex digits> (or the 64 digits alone) of the file at image_url",
    ),
    AfterValidator(_sha256),
]


# Fields only one way of deploying uses: the other way's are left out (stored empty).
INSTALLER_FIELDS = ("kernel_url", "initrd_url", "answer_template", "repo_url", "kernel_args")
IMAGE_FIELDS = ("image_url", "checksum", "format")
_NO_IMAGE_FIELDS: dict[str, Any] = dict.fromkeys(IMAGE_FIELDS, False)


class ImageIn(Strict):
    # Which template installs which family, and Anaconda's need of a repository: the
    # renderer's rules (boot/answers.py); an image deploy's fields, all or none by
    # ``deploy`` (provisioner/catalog.py). Refused with 422 when broken.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {
                        "deploy": {"const": "installer"},
                        "answer_template": {"const": "kickstart"},
                        "os_family": {"enum": ["rhel", "fedora"]},
                        "repo_url": {"minLength": 1},
                        **_NO_IMAGE_FIELDS,
                    },
                    "required": ["kernel_url", "initrd_url", "answer_template", "repo_url"],
                },
                {
                    "properties": {
                        "deploy": {"const": "installer"},
                        "answer_template": {"const": "preseed"},
                        "os_family": {"const": "debian"},
                        **_NO_IMAGE_FIELDS,
                    },
                    "required": ["kernel_url", "initrd_url", "answer_template"],
                },
                {
                    "properties": {
                        "deploy": {"const": "installer"},
                        "answer_template": {"const": "autoinstall"},
                        "os_family": {"const": "ubuntu"},
                        **_NO_IMAGE_FIELDS,
                    },
                    "required": ["kernel_url", "initrd_url", "answer_template"],
                },
                {
                    "properties": {
                        "deploy": {"const": "image"},
                        "kernel_url": False,
                        "initrd_url": False,
                        "answer_template": False,
                        "repo_url": {"maxLength": 0},
                        "kernel_args": {"maxLength": 0},
                    },
                    "required": ["deploy", *IMAGE_FIELDS],
                },
            ]
        }
    )

    name: Slug
    deploy: Deploy = "installer"
    os_family: OsFamily
    version: ImageVersion
    # Keep: may be left out (an image deploy has none), never null.
    kernel_url: Keep[BootLocation] = None
    initrd_url: Keep[BootLocation] = None
    repo_url: RepoUrl = ""
    answer_template: Keep[AnswerTemplate] = None
    kernel_args: Annotated[str, Field(max_length=1024)] = ""
    image_url: Keep[ImageUrl] = None
    checksum: Keep[Checksum] = None
    format: Keep[ImageFormat] = None


class ImagePatch(Strict):
    """Fields left out are unchanged; none may be null (an empty string clears
    ``repo_url`` and ``kernel_args``). A change of ``deploy`` drops the fields only the
    other way uses: give the new way's fields in the same request."""

    deploy: Keep[Deploy] = None
    os_family: Keep[OsFamily] = None
    version: Keep[ImageVersion] = None
    kernel_url: Keep[BootLocation] = None
    initrd_url: Keep[BootLocation] = None
    repo_url: Keep[RepoUrl] = None
    answer_template: Keep[AnswerTemplate] = None
    kernel_args: Keep[Annotated[str, Field(max_length=1024)]] = None
    image_url: Keep[ImageUrl] = None
    checksum: Keep[Checksum] = None
    format: Keep[ImageFormat] = None


class ImageOut(BaseModel):
    """Without ImageIn's patterns: an image stored under older rules must still read.
    The fields the image's ``deploy`` does not use are empty strings."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    deploy: Deploy
    os_family: OsFamily
    version: str
    kernel_url: str
    initrd_url: str
    repo_url: str
    answer_template: AnswerTemplate | Literal[""]
    kernel_args: str
    image_url: str
    checksum: str
    format: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
