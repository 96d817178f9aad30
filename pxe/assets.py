"""The TFTP boot root: the iPXE binaries that firmware fetches before anything speaks HTTP.

They come from Debian's ``ipxe`` package (or a directory the operator builds them into)
and are copied, never committed: the project ships no binaries. Each copy lands by
rename, so a TFTP transfer running meanwhile reads either the old file or the new one,
never half of each.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEBIAN_IPXE_DIR = Path("/usr/lib/ipxe")

# BIOS firmware gets undionly.kpxe; UEFI x64 gets ipxe.efi (iPXE's own NIC drivers) or
# snponly.efi (the firmware's driver, which works on more hardware).
BOOT_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")

HOW_TO_GET_THEM = (
    "install Debian's iPXE build (`apt-get install ipxe`, files in /usr/lib/ipxe) "
    "or pass --source DIR with your own build"
)


class AssetError(Exception):
    """The boot root cannot be assembled; the message says what to do."""


class Action(StrEnum):
    COPIED = "copied"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    MISSING = "missing"


@dataclass(frozen=True)
class AssetResult:
    name: str
    action: Action
    source: Path
    target: Path
    size: int | None


def _install(source: Path, target: Path) -> None:
    # The temporary file lives beside the target: os.replace is atomic only within
    # one filesystem.
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _assemble_one(name: str, source_dir: Path, root: Path) -> AssetResult:
    source = source_dir / name
    target = root / name
    # Debian's ipxe.efi is a symlink into /boot: what counts is the file it names.
    if not source.is_file():
        return AssetResult(name, Action.MISSING, source, target, None)
    size = source.stat().st_size
    exists = target.is_file() and not target.is_symlink()
    if exists and filecmp.cmp(source, target, shallow=False):
        return AssetResult(name, Action.UNCHANGED, source, target, size)
    try:
        _install(source, target)
    except OSError as exc:
        raise AssetError(f"cannot copy {source} to {target}: {exc.strerror or exc}") from exc
    return AssetResult(name, Action.UPDATED if exists else Action.COPIED, source, target, size)


def assemble(
    source_dir: Path, root: Path, names: tuple[str, ...] = BOOT_FILES
) -> list[AssetResult]:
    """Copy each boot file that differs from ``source_dir`` into ``root``.

    Files the source lacks are reported as missing rather than raised, so that one
    missing binary does not keep the others from being installed.
    """
    if not source_dir.is_dir():
        raise AssetError(f"the source {source_dir} is not a directory; {HOW_TO_GET_THEM}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"cannot create the TFTP root {root}: {exc.strerror or exc}") from exc
    return [_assemble_one(name, source_dir, root) for name in names]
