"""The file side of the TFTP server: which names may be served from the root, and their
content encoded as DATA packets, kept for reuse."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pxe.tftp.packets import Refused, encode_blocks, to_netascii
from pxe.tftp.transfer import ACCESS_VIOLATION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Content:
    size: int
    blocks: list[bytes]


def encode_content(data: bytes, blksize: int, netascii: bool) -> Content:
    """What a transfer sends: the file in the mode asked (its size is the bytes on the
    wire, which tsize reports), as DATA packets."""
    sent = to_netascii(data) if netascii else data
    return Content(len(sent), encode_blocks(sent, blksize))


class ContentCache:
    """Encoded blocks by (file identity, mtime, size, blksize, mode), least recently used
    out: in a boot storm everyone fetches the same binary with the same block size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._entries: OrderedDict[tuple[int, ...], Content] = OrderedDict()

    def get(self, fd: int, st: os.stat_result, blksize: int, netascii: bool) -> Content:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, blksize, netascii)
        content = self._entries.get(key)
        if content is not None:
            self._entries.move_to_end(key)
            return content
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        content = encode_content(b"".join(chunks), blksize, netascii)
        if content.size <= self._limit // 4:
            self._entries[key] = content
            self._used += content.size
            while self._used > self._limit:
                _, evicted = self._entries.popitem(last=False)
                self._used -= evicted.size
        return content


class ServedRoot:
    """The directory the server reads from, held open from ``open_root()`` to ``close()``
    so every lookup starts from the same directory even if its path is swapped."""

    def __init__(self, root: Path, cache_bytes: int) -> None:
        self.path = root
        self.real = ""
        self._fd = -1
        self._cache = ContentCache(cache_bytes)

    def open_root(self) -> None:
        self.real = os.path.realpath(self.path)
        self._fd = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd)
        self._fd = -1

    def content(self, filename: str, blksize: int, netascii: bool) -> Content | None:
        """The file's content as sent in the mode asked, or None when nothing of that
        name is under the root.

        The name is checked, then resolved with realpath and checked to lie under the
        root; the resolved path (free of symlinks) is then opened component by component
        from the root with O_NOFOLLOW, so a symlink swapped in after the check fails the
        open instead of leading out."""
        if (
            not filename
            or filename.startswith("/")
            or "\0" in filename
            or ".." in filename.split("/")
        ):
            raise Refused(2, "Access violation", ACCESS_VIOLATION)
        real = os.path.realpath(os.path.join(self.real, filename))
        if not real.startswith(self.real + os.sep):
            raise Refused(2, "Access violation", ACCESS_VIOLATION)
        parts = real[len(self.real) + 1 :].split(os.sep)
        directories: list[int] = []
        try:
            at = self._fd
            for part in parts[:-1]:
                at = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=at)
                directories.append(at)
            # O_NONBLOCK: opening a FIFO must not hang the loop (it is refused below).
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, dir_fd=at)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.warning("tftp: refused %r: %s", filename, os.strerror(exc.errno or errno.EIO))
            raise Refused(2, "Access violation", ACCESS_VIOLATION) from None
        finally:
            for directory in directories:
                os.close(directory)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(2, "Not a regular file", ACCESS_VIOLATION)
            return self._cache.get(fd, st, blksize, netascii)
        finally:
            os.close(fd)
