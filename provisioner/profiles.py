"""Hardware profiles: how to recognise a server model from inventory facts, and what it
needs to install well (boot mode, serial console, root disk, kernel arguments, notes).

Profiles are YAML files, one per model family, validated against :class:`Profile` when
loaded. A broken file is reported (file, field, message) and skipped, so one typo never
stops the service nor hides the other profiles. The format is documented in
``hardware_profiles/README.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from provisioner.schemas import Slug, Strict

log = logging.getLogger(__name__)


def _compile(value: object) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ValueError("expected a regular expression as a string")
    if not value:
        # An empty pattern matches everything: a vendor profile would swallow all servers.
        raise ValueError("an empty pattern matches everything; remove it instead")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc


Regex = Annotated[
    re.Pattern[str],
    PlainValidator(_compile),
    PlainSerializer(lambda pattern: pattern.pattern, return_type=str),
    WithJsonSchema({"type": "string", "format": "regex"}),
]

_DEVICE_PATH = re.compile(r"/dev/\S+")


def _disk_hint(value: str) -> str:
    if value in ("smallest", "largest") or _DEVICE_PATH.fullmatch(value):
        return value
    raise ValueError(
        f"{value!r} is not a root-disk hint: use 'smallest', 'largest' or a device path "
        "such as /dev/sda or /dev/disk/by-path/..."
    )


def _kernel_arg(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not one kernel argument: give one per list item")
    if value.startswith("console="):
        # The console block is the one source of truth: a second console= would split
        # the installer's output between two ports.
        raise ValueError("set the serial console in 'console', not in kernel_args")
    return value


class MatchRules(Strict):
    """A profile matches when a vendor pattern finds the manufacturer AND a product
    pattern finds the product. An empty list matches anything; an empty ``match``
    makes the profile a fallback."""

    vendor: list[Regex] = Field(default_factory=list)
    product: list[Regex] = Field(default_factory=list)

    def matches(self, manufacturer: str, product: str) -> bool:
        return _any(self.vendor, manufacturer) and _any(self.product, product)


def _any(patterns: list[re.Pattern[str]], value: str) -> bool:
    return not patterns or any(pattern.search(value) for pattern in patterns)


class Console(Strict):
    port: Literal["ttyS0", "ttyS1", "ttyS2", "ttyS3"]
    speed: Literal[9600, 19200, 38400, 57600, 115200] = 115200


class RootDisk(Strict):
    """Ironic-style root device hints: the filters narrow the disks, then ``hint`` picks
    one (the smallest or largest left, or the one with that device path)."""

    hint: Annotated[str, AfterValidator(_disk_hint)] = "smallest"
    size_gb_min: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Ignore disks smaller than this (GB, 10^9 bytes)."
    )
    model: Regex | None = None
    serial: Regex | None = None
    wwn: Regex | None = None


class Notes(Strict):
    raid: Annotated[str, Field(max_length=1000)] = ""
    bios: Annotated[str, Field(max_length=1000)] = ""


class Profile(Strict):
    name: Slug = Field(description="Equals the file name without .yaml.")
    description: Annotated[str, Field(min_length=1, max_length=255)]
    priority: Annotated[int, Field(ge=0, le=1000)] = Field(
        description="Higher wins when several profiles match; the fallback has 0."
    )
    match: MatchRules
    boot_mode: Literal["bios", "uefi"]
    console: Console
    root_disk: RootDisk = Field(default_factory=RootDisk)
    kernel_args: list[Annotated[str, AfterValidator(_kernel_arg)]] = Field(default_factory=list)
    notes: Notes = Field(default_factory=Notes)


class LoadError(BaseModel):
    file: str = Field(
        description="File name inside the profiles directory, or the directory itself "
        "when it cannot be listed."
    )
    field: str | None = Field(description="Dotted path to the bad field; null for the file.")
    message: str


# The API's listing, beside the models it lists rather than in provisioner/schemas.py:
# this module builds on schemas, so schemas cannot import it.
class ProfileList(BaseModel):
    items: list[Profile]
    errors: list[LoadError] | None = Field(
        description="Profile files skipped at load and why; null for viewer tokens."
    )


# Placeholders that BIOS vendors leave in unset FRU/SMBIOS fields; they carry no
# information, so the board's value is used instead, as for an empty field.
_PLACEHOLDERS = frozenset(
    {"", "to be filled by o.e.m.", "default string", "not specified", "none", "n/a"}
)


def _fact(facts: Mapping[str, Any], primary: str, fallback: str) -> str:
    for key in (primary, fallback):
        value = facts.get(key)
        if isinstance(value, str) and value.strip().lower() not in _PLACEHOLDERS:
            return value.strip()
    return ""


@dataclass(frozen=True)
class ProfileSet:
    """The valid profiles, highest priority first (then by name), and why the others
    were skipped."""

    profiles: tuple[Profile, ...] = ()
    errors: tuple[LoadError, ...] = ()

    def get(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def match(self, facts: Mapping[str, Any]) -> Profile | None:
        """The best profile for inventory facts (``manufacturer``, ``product``, and
        ``board_manufacturer``/``board_product`` when those are empty); None when nothing
        matches and there is no fallback."""
        manufacturer = _fact(facts, "manufacturer", "board_manufacturer")
        product = _fact(facts, "product", "board_product")
        return next((p for p in self.profiles if p.match.matches(manufacturer, product)), None)


def shipped_profiles_dir() -> Path:
    """The profiles shipped with the package when installed, else the checkout's."""
    here = Path(__file__).resolve().parent
    installed = here / "_hardware_profiles"
    return installed if installed.is_dir() else here.parent / "hardware_profiles"


def _field(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def _schema_errors(file: str, exc: ValidationError) -> list[LoadError]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; the format is in hardware_profiles/README.md"
        out.append(LoadError(file=file, field=_field(tuple(err["loc"])), message=message))
    return out


def _parse(path: Path) -> Profile | list[LoadError]:
    file = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return [LoadError(file=file, field=None, message=f"not valid YAML{where}: {exc.problem}")]
    except yaml.YAMLError as exc:
        return [LoadError(file=file, field=None, message=f"not valid YAML: {exc}")]
    except (OSError, UnicodeDecodeError) as exc:
        return [LoadError(file=file, field=None, message=f"cannot be read: {exc}")]
    if not isinstance(data, dict):
        return [LoadError(file=file, field=None, message="expected a mapping of profile fields")]
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        return _schema_errors(file, exc)
    if profile.name != path.stem:
        return [
            LoadError(
                file=file,
                field="name",
                message=f"name {profile.name!r} must equal the file name {path.stem!r}",
            )
        ]
    return profile


def load_profiles(directory: Path) -> ProfileSet:
    """Load ``*.yaml``/``*.yml`` from ``directory``. Never raises for a bad file: it is
    logged, listed in ``errors`` and skipped. Files are read in name order, so of two
    files with the same profile name the first one is kept."""
    errors: list[LoadError] = []
    loaded: dict[str, tuple[str, Profile]] = {}
    try:
        paths = sorted(
            path
            for path in directory.iterdir()
            # Dotfiles are editor backups and lock files, not profiles.
            if path.suffix in (".yaml", ".yml") and not path.name.startswith(".")
        )
    except OSError as exc:
        message = f"cannot list the profiles directory: {exc.strerror or exc}"
        errors.append(LoadError(file=str(directory), field=None, message=message))
    else:
        for path in paths:
            result = _parse(path)
            if isinstance(result, list):
                errors.extend(result)
            elif result.name in loaded:
                first = loaded[result.name][0]
                message = f"profile {result.name!r} is already defined in {first}"
                errors.append(LoadError(file=path.name, field="name", message=message))
            else:
                loaded[result.name] = (path.name, result)
    for error in errors:
        where = f"{error.file}: {error.field}" if error.field else error.file
        log.warning("hardware profile skipped: %s: %s", where, error.message)
    profiles = sorted((p for _, p in loaded.values()), key=lambda p: (-p.priority, p.name))
    log.info("loaded %d hardware profiles from %s", len(profiles), directory)
    return ProfileSet(profiles=tuple(profiles), errors=tuple(errors))
