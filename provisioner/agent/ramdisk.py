"""The two file formats an agent ramdisk is made of, written without root or tools: the
``newc`` cpio archive the kernel unpacks as its initramfs, and the ``.modinfo`` section of
a kernel module, which names the modules it needs loaded first.

Both are written deterministically (owner root, time zero, sorted entries), so the same
inputs give the same bytes and a rebuild can be recognised as unchanged.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One member of the archive: a directory (``data`` None, no ``target``), a file,
    or a symlink (``target`` set)."""

    mode: int
    data: bytes | None = None
    target: str | None = None


def directory() -> Entry:
    return Entry(stat.S_IFDIR | 0o755)


def file(data: bytes, *, executable: bool = False) -> Entry:
    return Entry(stat.S_IFREG | (0o755 if executable else 0o644), data=data)


def symlink(target: str) -> Entry:
    return Entry(stat.S_IFLNK | 0o777, target=target)


def _header(ino: int, entry: Entry, name: str, size: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def _pad(out: io.BytesIO) -> None:
    out.write(b"\0" * (-out.tell() % 4))


def cpio(entries: Mapping[str, Entry]) -> bytes:
    """A ``newc`` archive of ``entries`` (paths relative to the root, no leading ``/``),
    parents before children, ending with the ``TRAILER!!!`` record."""
    out = io.BytesIO()
    members = sorted(entries.items())
    for ino, (name, entry) in enumerate([*members, ("TRAILER!!!", Entry(0))], start=1):
        body = entry.data if entry.data is not None else (entry.target or "").encode()
        out.write(_header(ino if entry.mode else 0, entry, name, len(body)))
        out.write(name.encode() + b"\0")
        _pad(out)
        out.write(body)
        _pad(out)
    return out.getvalue()


def initramfs(entries: Mapping[str, Entry]) -> bytes:
    """The gzip-compressed archive (every kernel the agent boots has RD_GZIP built in)."""
    return gzip.compress(cpio(entries), compresslevel=9, mtime=0)


def with_parents(entries: Mapping[str, Entry]) -> dict[str, Entry]:
    """``entries`` plus a directory entry for every parent they imply."""
    out = dict(entries)
    for name in entries:
        parts = Path(name).parts
        for depth in range(1, len(parts)):
            out.setdefault("/".join(parts[:depth]), directory())
    return out


# ---- kernel modules ------------------------------------------------------------------


class NotAModule(ValueError):
    pass


def module_info(elf: bytes) -> dict[str, list[str]]:
    """The ``key=value`` strings of an x86_64 module's ``.modinfo`` section, by key."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise NotAModule("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = elf.index(b"\0", names_at + name)
        if elf[names_at + name : end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise NotAModule("no .modinfo section")


def load_order(wanted: Iterable[str], modules: Mapping[str, Path]) -> list[str]:
    """``wanted`` module names and every module they depend on, dependencies first.

    ``modules`` maps each module name (``virtio_net``) of the kernel tree to its file;
    a wanted module the kernel does not ship is an error, as it is the build's input.
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name not in modules:
            wanted_by = f" (needed by {path[-1]})" if path else ""
            raise NotAModule(f"the kernel has no module {name}{wanted_by}")
        if name in path:
            raise NotAModule(f"modules depend on each other: {' -> '.join((*path, name))}")
        info = module_info(modules[name].read_bytes())
        for dependency in ",".join(info.get("depends", [])).split(","):
            if dependency:
                visit(dependency.replace("-", "_"), (*path, name))
        seen.add(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def module_files(tree: Path) -> dict[str, Path]:
    """Every module under ``tree`` by the name the kernel knows it by (``-`` as ``_``)."""
    return {path.name.removesuffix(".ko").replace("-", "_"): path for path in tree.rglob("*.ko")}
