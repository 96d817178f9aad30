"""What the deploy agent posts and what it is told, as data: pure, no I/O.

The agent (``init.sh``) posts its inventory, heartbeats and job results as JSON and gets
one command line per heartbeat (docs/agent.md has the whole protocol). The models here
bound every field, since anything on a boot network can post to these routes with a
token it has seen; the service records only what validates.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from provisioner.profiles import RootDisk

Text = Annotated[str, Field(max_length=200)]
# JSON's exact integers (2**53 - 1): a schema maximum of 2**63 - 1 is read back as a
# float by clients and no longer bounds what they send. Still 9 PB of disk.
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]


class _Loose(BaseModel):
    # Agents of a newer build may post more than this one reads.
    model_config = ConfigDict(extra="ignore")


class System(_Loose):
    vendor: Text = ""
    product: Text = ""
    serial: Text = ""
    uuid: Text = ""
    bios_vendor: Text = ""
    bios_version: Text = ""
    bios_date: Text = ""


class Cpu(_Loose):
    count: Count = 0
    model: Text = ""


class Disk(_Loose):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")]
    size_bytes: Count = 0
    model: Text = ""
    serial: Text = ""
    rotational: bool = False
    wwn: Text = ""


class Nic(_Loose):
    name: Annotated[str, Field(max_length=32)]
    mac: Annotated[str, Field(max_length=32)] = ""
    driver: Text = ""
    link: bool = False
    booted: bool = False


class Inventory(_Loose):
    """The machine as the agent sees it from the inside."""

    system: System = System()
    cpu: Cpu = Cpu()
    memory_bytes: Count = 0
    boot_mode: Literal["bios", "uefi"] = "bios"
    disks: Annotated[list[Disk], Field(max_length=64)] = []
    nics: Annotated[list[Nic], Field(max_length=64)] = []


class Heartbeat(_Loose):
    busy: Literal["", "deploy", "wipe"] = ""


class DiskWiped(_Loose):
    disk: Annotated[str, Field(max_length=64)]
    method: Literal["metadata", "full"]
    bytes: Count = 0
    seconds: Annotated[float, Field(ge=0)] = 0.0
    ok: bool = False
    verified: Text = ""
    message: Annotated[str, Field(max_length=500)] = ""


class Result(_Loose):
    """A finished job: an image written (and read back), or disks wiped."""

    command: Literal["deploy", "wipe"]
    ok: bool
    disk: Annotated[str, Field(max_length=64)] = ""
    bytes: Count = 0
    sha256: Annotated[str, Field(max_length=64)] = ""
    seconds: Annotated[float, Field(ge=0)] = 0.0
    message: Annotated[str, Field(max_length=500)] = ""
    disks: Annotated[list[DiskWiped], Field(max_length=64)] = []


class NoDisk(ValueError):
    """No disk of the inventory fits the hardware profile's root-disk hints."""


def root_disk(disks: list[Disk], hints: RootDisk) -> Disk:
    """The disk an image goes onto, by Ironic-style hints: the filters (size, model,
    serial, WWN) narrow the disks, then ``hint`` picks the smallest, the largest, or the
    one with that device path."""
    minimum = (hints.size_gb_min or 0) * 10**9
    fitting = [
        disk
        for disk in disks
        if disk.size_bytes > 0
        and disk.size_bytes >= minimum
        and _matches(hints.model, disk.model)
        and _matches(hints.serial, disk.serial)
        and _matches(hints.wwn, disk.wwn)
    ]
    if hints.hint.startswith("/dev/"):
        fitting = [disk for disk in fitting if f"/dev/{disk.name}" == hints.hint]
    if not fitting:
        seen = ", ".join(f"{d.name} ({d.size_bytes / 10**9:.1f} GB)" for d in disks) or "none"
        raise NoDisk(f"no disk fits the root-disk hints {_describe(hints)}; disks seen: {seen}")
    pick = max if hints.hint == "largest" else min
    return pick(fitting, key=lambda disk: (disk.size_bytes, disk.name))


def _matches(pattern: re.Pattern[str] | None, value: str) -> bool:
    return pattern is None or pattern.search(value) is not None


def _describe(hints: RootDisk) -> str:
    parts = [hints.hint]
    if hints.size_gb_min:
        parts.append(f"at least {hints.size_gb_min} GB")
    for what in ("model", "serial", "wwn"):
        pattern = getattr(hints, what)
        if pattern is not None:
            parts.append(f"{what} ~ {pattern.pattern}")
    return "(" + ", ".join(parts) + ")"


def wait(seconds: float) -> str:
    return f"wait {max(1, round(seconds))}"


def deploy(disk: Disk, served_format: str, raw_bytes: int, raw_sha256: str) -> str:
    return f"deploy /dev/{disk.name} {served_format} {raw_bytes} {raw_sha256}"


def wipe(policy: str, disks: list[Disk]) -> str:
    return " ".join(["wipe", policy, *(f"/dev/{disk.name}" for disk in disks)])


POWEROFF = "poweroff"
