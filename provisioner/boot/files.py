"""Kernels, initrds and disk images over HTTP, built for boot storms.

Starlette's FileResponse reads 64 KiB at a time, each read a round trip through a worker
thread; that caps a storm at a fifth to a third of nginx. Here a file is opened once, after a
realpath check that it lies inside the images directory. Spans already in the page cache
go to the socket with ``sendfile(2)`` when the server offers the ASGI zero-copy extension
(``provisioner serve`` does: provisioner/zerocopy.py). Otherwise, and for spans that must
come from disk, the file is sent in large chunks read with ``pread``: straight on the
event loop when the page cache has them (``RWF_NOWAIT``), in a thread when it does not, so
a cold disk never stalls the loop. Every chunk waits for the server's ``send`` (its write
buffer drains) before the next is read, so a slow client holds one chunk of memory, not
the file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from provisioner.errors import Problem
from provisioner.zerocopy import EXTENSION as ZEROCOPY_SEND

# Measured on 2 cores with uvloop + httptools (docs/nginx.md): 256 KiB to 2 MiB cost the
# same CPU per GiB, 1 MiB was fastest with 200 clients, 4 MiB cost a quarter more.
CHUNK = 1024 * 1024

# With the server's zero-copy extension (provisioner/zerocopy.py) the kernel sends the
# bytes; slices only bound how far a download runs before a disconnect is noticed and
# how precisely the bytes sent are counted.
ZEROCOPY_SLICE = 8 * CHUNK

# Reads that miss the page cache. Its own small pool: a storm of cold reads must not take
# the threads the API's synchronous routes run on, and one disk gains nothing from more.
_DISK_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="boot-files")

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class FileServed:
    """One boot-file response that ended, completed or aborted. ``bytes_sent`` counts
    body bytes handed to the server before the client went away. With
    ``accel_redirect`` the service sends no body: this reports the hand-off to nginx
    (``bytes_sent`` 0)."""

    token: str | None
    client: str
    path: str
    bytes_sent: int
    status: int
    complete: bool


Ended = Callable[[int, int, bool], None]
"""Told (bytes_sent, status, complete) when a response ends."""

FileObserver = Callable[[FileServed], None]
"""Told once per boot-file response when it ends. Called on the event loop, so it must
be cheap and never block."""


def report_to(observer: FileObserver, token: str | None, client: str, path: str) -> Ended:
    """The ``on_end`` of a response for ``path`` that tells ``observer``."""

    def ended(bytes_sent: int, status: int, complete: bool) -> None:
        observer(FileServed(token, client, path, bytes_sent, status, complete))

    return ended


def not_found(requested: str, root: Path, why: str) -> Problem:
    return Problem(404, f"There is no boot file {requested!r} in {root}: {why}.")


def confine(root: Path, requested: str) -> str:
    """The real path of ``requested`` if it names something inside ``root``.

    Refuses rather than normalises: a node asking for ``a/../b`` or ``\\b`` is misconfigured
    or probing, and a symlink may lead only to somewhere inside the directory."""
    parts = requested.split("/")
    if "\x00" in requested or "\\" in requested or {"", ".", ".."} & set(parts):
        raise not_found(requested, root, "not a plain relative path")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, requested))
    if os.path.commonpath((base, real)) != base:
        raise not_found(requested, root, "it leads outside the images directory")
    return real


@dataclass
class BootFile:
    """An open file inside the images directory; whoever holds it closes it."""

    fd: int
    size: int
    mtime: float
    etag: str
    nowait: bool = True  # False once the file system says it cannot do RWF_NOWAIT

    @classmethod
    def open(cls, root: Path, requested: str) -> BootFile:
        real = confine(root, requested)
        # O_NOFOLLOW: a symlink swapped in since the check is refused, not followed.
        # O_NONBLOCK: a FIFO planted in the directory cannot hang the event loop.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(real, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(requested, root, "no such file") from None
        except OSError as exc:
            raise not_found(requested, root, f"it cannot be read ({exc.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise not_found(requested, root, "not a regular file")
        etag = f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"'
        return cls(fd, info.st_size, info.st_mtime, etag)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime, usegmt=True)

    def cached(self, offset: int, size: int) -> bool:
        """Whether a span's first and last bytes are in the page cache, so that sending
        it will not wait for the disk. A probe, not a proof: files are read in from the
        front, and a page dropped in between costs one blocking read."""
        if not self.nowait:
            return False
        try:
            _read_cached(self.fd, offset, 1)
            _read_cached(self.fd, offset + size - 1, 1)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            self.nowait = False
            return False
        return True

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        if self.nowait:
            try:
                return _read_cached(self.fd, offset, size)
            except BlockingIOError:
                pass  # not all in the page cache: read it from disk in a thread
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self.nowait = False  # tmpfs, some network file systems
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_DISK_READS, os.pread, self.fd, size, offset)


def _read_cached(fd: int, offset: int, size: int) -> bytearray:
    """Up to ``size`` bytes from the page cache; BlockingIOError if none are there.

    The buffer is sent as it is, a fresh one per chunk since the server's transport may
    still hold the last: copying it into bytes costs 4 to 10 times the read (measured)."""
    buffer = bytearray(size)
    count = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    del buffer[count:]
    return buffer


@dataclass(frozen=True)
class Selection:
    status: int  # 200, 206 or 304
    start: int
    length: int


def select(file: BootFile, headers: Headers) -> Selection:
    """What to answer a GET or HEAD with, after its conditional and Range headers
    (RFC 9110 sections 13.2.2 and 14). Problem 416 for a range past the end."""
    if _not_modified(file, headers):
        return Selection(304, 0, 0)
    header = headers.get("range")
    if header is None or not _if_range_holds(file, headers.get("if-range")):
        return Selection(200, 0, file.size)
    span = _byte_range(header, file.size)
    if span is None:
        return Selection(200, 0, file.size)
    first, last = span
    return Selection(206, first, last - first + 1)


def _not_modified(file: BootFile, headers: Headers) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or file.etag in tags  # the weak comparison
    since = _http_date(headers.get("if-modified-since"))
    return since is not None and int(file.mtime) <= since


def _if_range_holds(file: BootFile, if_range: str | None) -> bool:
    if if_range is None:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == file.etag  # the strong comparison: a weak tag never holds
    return _http_date(if_range) == int(file.mtime)


def _http_date(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError):
        return None


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first and last byte of the one range asked for, or None to send it all.

    A Range a server does not understand may be ignored (RFC 9110 section 14.2), and so is
    a request for several ranges: those need a multipart/byteranges body, which no boot
    loader or installer asks for, and answering with the whole file is allowed."""
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    if last and int(last) < int(first):
        return None
    if int(first) >= size:
        raise unsatisfiable(size)
    return int(first), min(int(last), size - 1) if last else size - 1


def unsatisfiable(size: int) -> Problem:
    return Problem(
        416,
        f"The range starts past the end of the file, which has {size} bytes.",
        headers={"Content-Range": f"bytes */{size}"},
        title="Range not satisfiable",
    )


class BootFileResponse(Response):
    """Sends a selection of an open BootFile, then closes it whatever happens."""

    def __init__(self, file: BootFile, selection: Selection, on_end: Ended) -> None:
        self.file = file
        self.selection = selection
        self.on_end = on_end
        headers = {"ETag": file.etag, "Last-Modified": file.last_modified}
        if selection.status != 304:
            headers["Accept-Ranges"] = "bytes"
            headers["Content-Length"] = str(selection.length)
        if selection.status == 206:
            last = selection.start + selection.length - 1
            headers["Content-Range"] = f"bytes {selection.start}-{last}/{file.size}"
        media_type = None if selection.status == 304 else "application/octet-stream"
        super().__init__(status_code=selection.status, headers=headers, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent, complete = 0, False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope["method"] == "HEAD" or self.selection.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                complete = True
            else:
                sent, complete = await self._stream(scope, receive, send)
        finally:
            self.file.close()
            self.on_end(sent, self.status_code, complete)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, bool]:
        # uvicorn's send returns quietly once the client has gone, so without watching
        # receive() for the disconnect a dead download would be read to the end.
        gone = asyncio.ensure_future(_disconnect(receive))
        zerocopy = ZEROCOPY_SEND in scope.get("extensions", {})
        sent = 0
        offset, end = self.selection.start, self.selection.start + self.selection.length
        try:
            while offset < end:
                size = min(ZEROCOPY_SLICE, end - offset)
                if zerocopy and self.file.cached(offset, size):
                    more = offset + size < end
                    span = {"file": self.file, "offset": offset, "count": size, "more_body": more}
                    try:
                        await send({"type": ZEROCOPY_SEND, **span})
                    except ConnectionError:
                        return sent, False
                else:
                    chunk = await self.file.read(offset, min(CHUNK, end - offset))
                    if not chunk:
                        raise RuntimeError(f"the file shrank below {end} bytes while being sent")
                    size = len(chunk)
                    more = offset + size < end
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
                offset += size
                if gone.done():
                    return sent, False
                sent += size
                # A client that drains as fast as we read never makes send wait; let the
                # other downloads and the iPXE script requests have their turn anyway.
                await asyncio.sleep(0)
            return sent, True
        finally:
            gone.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def accel_redirect(prefix: str, root: Path, requested: str) -> Response:
    """Authorise a download that a front nginx then serves from its internal location.

    The same confinement as serving it here, and the file must exist, so a node asking for
    the wrong name gets the same 404 problem in either mode. nginx handles Range and the
    conditional headers itself, from the original request."""
    real = confine(root, requested)
    try:
        info = os.stat(real)
    except OSError:
        raise not_found(requested, root, "no such file") from None
    if not stat.S_ISREG(info.st_mode):
        raise not_found(requested, root, "not a regular file")
    # nginx unescapes the URI, and a header must be Latin-1: send it percent-encoded.
    location = prefix.rstrip("/") + "/" + quote(requested)
    return Response(headers={"X-Accel-Redirect": location})


def respond(
    root: Path, accel_prefix: str | None, requested: str, headers: Headers, on_end: Ended
) -> Response:
    """The response to a request for ``requested`` below ``root``: the file itself (or
    the byte range and conditions ``headers`` ask for), or with ``accel_prefix`` the
    hand-off to nginx. ``on_end`` hears how it ended, refusals included."""
    try:
        if accel_prefix:
            response = accel_redirect(accel_prefix, root, requested)
            on_end(0, response.status_code, True)
            return response
        file = BootFile.open(root, requested)
    except Problem as problem:
        on_end(0, problem.status, True)
        raise
    try:
        selection = select(file, headers)
    except Problem as problem:
        file.close()
        on_end(0, problem.status, True)
        raise
    return BootFileResponse(file, selection, on_end)
