"""Asyncio TFTP client: fetches one file the way PXE firmware does (RRQ, octet, with the
blksize/tsize/windowsize options), for the lab's emulated machines and the boot-storm
benchmark. Many fetches share one event loop, so the per-packet path is kept as lean as
the server's: tftpy encodes the request and parses the OACK, DATA and ACK are handled by
index."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from tftpy.TftpPacketFactory import TftpPacketFactory  # type: ignore[import-untyped]
from tftpy.TftpPacketTypes import TftpPacketRRQ  # type: ignore[import-untyped]

_DATA, _ERROR, _OACK = 3, 5, 6
_UNKNOWN_TID = b"\x00\x05\x00\x05Unknown transfer ID\x00"


class TftpError(Exception):
    """The server answered with an ERROR packet, or the transfer failed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"TFTP error {code}: {message}")
        self.code = code
        self.message = message


def _ack(block: int) -> bytes:
    return bytes((0, 4, (block >> 8) & 0xFF, block & 0xFF))


class _Download(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int], request: bytes) -> None:
        self.server = server
        self.request = request
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None  # the server's transfer ID, once known
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.blksize = 512
        self.window = 1
        self.tsize: int | None = None
        self.expected = 1  # next block, counted without wrapping
        self.in_window = 0
        self.gap_acked = False
        self.progress = 0
        self.chunks: list[bytes] = []
        self.last_sent = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The stdlib's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.transport.sendto(self.request, self.server)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(TftpError(0, f"network error: {exc}"))

    def resend(self) -> None:
        """After a silence: the request again, or our last ACK."""
        assert self.transport is not None
        self.in_window = 0
        self.transport.sendto(self.last_sent, self.peer or self.server)

    def _send(self, packet: bytes) -> None:
        assert self.transport is not None
        assert self.peer is not None
        self.last_sent = packet
        self.transport.sendto(packet, self.peer)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.done.done() or len(data) < 4 or data[0] != 0:
            return
        if self.peer is None:
            if addr[0] != self.server[0]:
                return
            self.peer = addr
        elif addr != self.peer:
            assert self.transport is not None
            self.transport.sendto(_UNKNOWN_TID, addr)
            return
        opcode = data[1]
        if opcode == _DATA:
            self._on_data(data[2] << 8 | data[3], data)
        elif opcode == _OACK and self.expected == 1:
            self._on_oack(data)
        elif opcode == _ERROR:
            message = data[4:].split(b"\0", 1)[0].decode(errors="replace")
            self.done.set_exception(TftpError(data[2] << 8 | data[3], message))

    def _on_oack(self, data: bytes) -> None:
        try:
            options = {
                str(k).lower(): int(v) for k, v in TftpPacketFactory().parse(data).options.items()
            }
        except Exception:
            self.done.set_exception(TftpError(8, "malformed OACK"))
            return
        self.blksize = options.get("blksize", self.blksize)
        self.window = options.get("windowsize", self.window)
        self.tsize = options.get("tsize")
        self.progress += 1
        self._send(_ack(0))

    def _on_data(self, wire: int, data: bytes) -> None:
        if wire != self.expected & 0xFFFF:
            # A gap or a duplicate: say once where we are, so the server resends from
            # there without waiting for its timer (and never a storm of duplicate ACKs).
            if not self.gap_acked:
                self.gap_acked = True
                self.in_window = 0
                self._send(_ack((self.expected - 1) & 0xFFFF))
            return
        payload = data[4:]
        self.chunks.append(payload)
        self.progress += 1
        self.gap_acked = False
        self.in_window += 1
        last = len(payload) < self.blksize
        if last or self.in_window >= self.window:
            self.in_window = 0
            self._send(_ack(wire))
        self.expected += 1
        if last:
            content = b"".join(self.chunks)
            if self.tsize is not None and self.tsize != len(content):
                self.done.set_exception(
                    TftpError(0, f"got {len(content)} bytes, tsize said {self.tsize}")
                )
            else:
                self.done.set_result(content)


async def fetch(
    host: str,
    port: int,
    filename: str,
    *,
    blksize: int | None = None,
    tsize: bool = False,
    windowsize: int | None = None,
    timeout: float = 1.0,
    retries: int = 5,
    local_address: str | None = None,
) -> bytes:
    """The file's content. Raises TftpError on an ERROR from the server, and TimeoutError
    when ``retries`` silences of ``timeout`` seconds follow one another. ``local_address``
    is the source address to send from (the server sees it as the client)."""
    request = TftpPacketRRQ()
    request.filename = filename
    request.mode = "octet"
    options: dict[str, int] = {}
    if blksize is not None:
        options["blksize"] = blksize
    if tsize:
        options["tsize"] = 0
    if windowsize is not None:
        options["windowsize"] = windowsize
    request.options = options
    encoded = bytes(request.encode().buffer)
    loop = asyncio.get_running_loop()
    transport, download = await loop.create_datagram_endpoint(
        lambda: _Download((host, port), encoded),
        family=socket.AF_INET,
        local_addr=(local_address, 0) if local_address else None,
    )
    try:
        silences = 0
        while True:
            seen = download.progress
            try:
                return await asyncio.wait_for(asyncio.shield(download.done), timeout)
            except TimeoutError:
                if download.progress != seen:
                    silences = 0
                    continue
                silences += 1
                if silences > retries:
                    raise
                download.resend()
    finally:
        transport.close()
