"""uvicorn's HTTP protocol with the ASGI zero-copy send extension.

A boot storm is dozens to hundreds of machines pulling a kernel and an initrd at once. Sent
through ASGI body messages every byte is read into a Python buffer and copied into the
socket: about 0.45 CPU seconds per GiB on one core, against nginx's 0.08 with
``sendfile(2)``. uvicorn offers no way to hand it a file, so this protocol adds the ASGI
spec's ``http.response.zerocopysend`` extension: the application passes an open file, an
offset and a count, and the kernel moves the bytes from the page cache to the socket.

The socket belongs to the transport, which the event loop will not let anyone else watch,
so the bytes go through a duplicate of its descriptor: the transport's buffer is drained
first (the status line and headers), then ``sendfile`` runs whenever the socket is
writable. Only plain HTTP with a Content-Length qualifies; TLS and chunked responses get
no extension or an error, and applications fall back to body messages.

This leans on two uvicorn internals (``HttpToolsProtocol._start_asgi_task`` and the
request cycle's fields); pyproject.toml pins the uvicorn minor version it was written for
and tests/boot/test_files.py checks the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import is_ssl

EXTENSION = "http.response.zerocopysend"


class ClientDisconnected(ConnectionError):
    """Raised by a zero-copy send once the client has gone, as the ASGI spec asks of
    servers (uvicorn's body messages return quietly instead): the application then knows
    exactly which bytes were never sent."""


class ZeroCopyHttpProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.run(..., http=ZeroCopyHttpProtocol)``."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not is_ssl(self.transport):
            self.scope["extensions"] = {EXTENSION: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        async def with_zerocopy(scope: Any, receive: Any, send: Any) -> None:
            async def zerocopy_send(message: Any) -> None:
                if message["type"] == EXTENSION:
                    await _send_file(cycle, message)
                else:
                    await send(message)

            await app(scope, receive, zerocopy_send)

        super()._start_asgi_task(cycle, with_zerocopy)


async def _send_file(cycle: RequestResponseCycle, message: dict[str, Any]) -> None:
    """One ``http.response.zerocopysend`` message, as the ASGI spec describes it."""
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"Unexpected ASGI message {EXTENSION!r} outside a response body.")
    if cycle.chunked_encoding:
        raise RuntimeError(f"{EXTENSION!r} needs a Content-Length, not chunked encoding.")
    source = message["file"].fileno()
    offset = message.get("offset")
    if offset is None:
        offset = os.lseek(source, 0, os.SEEK_CUR)
    count = message.get("count")
    if count is None:
        count = os.fstat(source).st_size - offset
    more_body = message.get("more_body", False)
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    if cycle.disconnected:
        raise ClientDisconnected("the client closed the connection")
    if cycle.scope["method"] != "HEAD" and count:
        await _sendfile(cycle, source, offset, count)
        cycle.expected_content_length -= count
    # uvicorn's own body path ends the response: its length check, keep-alive, pipelining.
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": more_body})


async def _sendfile(cycle: RequestResponseCycle, source: int, offset: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    transport = cycle.transport
    out = os.dup(transport.get_extra_info("socket").fileno())
    writable = asyncio.Event()
    loop.add_writer(out, writable.set)
    try:
        end = offset + count
        while True:
            if cycle.disconnected:
                raise ClientDisconnected("the client closed the connection")
            # Waiting first gives the other downloads and requests their turn even when
            # this client drains as fast as the kernel can send.
            await writable.wait()
            writable.clear()
            if transport.get_write_buffer_size():
                continue  # the status line and headers go first, from the transport
            try:
                sent = os.sendfile(out, source, offset, end - offset)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ClientDisconnected(f"the client closed the connection ({exc})") from exc
            if sent == 0:
                raise RuntimeError(f"the file ended before byte {end} while being sent")
            offset += sent
            if offset >= end:
                return
    finally:
        loop.remove_writer(out)
        os.close(out)
