"""One read transfer: its own UDP socket (its transfer ID), windows of DATA packets, ACKs,
and retransmission with backoff.

The socket is not connected, so a stranger's packet is seen and answered with error 5
instead of being dropped unseen. Retransmission uses one lazy timer per session: an ACK
only moves a deadline, and the timer re-arms itself when it fires early."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from pxe.tftp.files import Content
from pxe.tftp.packets import ACK, DEFAULT_BLKSIZE, ERROR, oack_packet
from pxe.tftp.transfer import ABORTED, OK, TIMEOUT, Transfer

if TYPE_CHECKING:
    from pxe.tftp.server import TftpServer

# What a session reads of a datagram: an ACK is 4 bytes, and of an ERROR only its first
# 4 matter; a small buffer spares a 64 KiB allocation per packet.
_SESSION_RECV = 16


class Session:
    """One read transfer. Blocks are numbered from 1 without wrapping (``acked``,
    ``sent``); only the wire carries them modulo 65536."""

    __slots__ = (
        "acked",
        "base",
        "blocks",
        "content_size",
        "deadline",
        "done",
        "filename",
        "interval",
        "last",
        "local",
        "loop",
        "oack",
        "options",
        "peer",
        "sent",
        "server",
        "sock",
        "started",
        "timer",
        "tries",
        "window",
    )

    def __init__(
        self,
        server: TftpServer,
        sock: socket.socket,
        peer: tuple[str, int],
        local: str,
        filename: str,
        content: Content,
        options: dict[str, int],
        started: float,
    ) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.peer = peer
        self.local = local
        self.filename = filename
        self.blocks = content.blocks
        self.content_size = content.size
        self.last = len(content.blocks)
        self.options = options
        self.window = options.get("windowsize", 1)
        self.started = started
        self.base = float(options.get("timeout", server.timeout))
        self.interval = self.base
        self.tries = 0
        self.done = False
        self.oack = oack_packet(options) if options else b""
        # With an OACK, its ACK (block 0) is the first one awaited.
        self.acked = -1 if self.oack else 0
        self.sent = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._on_readable)
        self._transmit()
        self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _transmit(self) -> None:
        """(Re)send what follows the last acknowledged block: the OACK, or one window."""
        if self.acked < 0:
            self._send(self.oack)
            self.deadline = self.loop.time() + self.interval
            return
        first = self.acked + 1
        end = min(self.acked + self.window, self.last)
        sendto = self.sock.sendto
        blocks = self.blocks
        peer = self.peer
        try:
            for index in range(first - 1, end):
                sendto(blocks[index], peer)
        except OSError:
            # A full socket queue (or a transient network error): the client's ACK of an
            # earlier block or our timer sends the rest again.
            pass
        self.sent = end
        self.deadline = self.loop.time() + self.interval

    def _send(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(packet, self.peer)

    def _on_readable(self) -> None:
        # One datagram per call: the loop calls again while more are queued, and a lockstep
        # client never queues more, so draining would cost a raised BlockingIOError each time.
        try:
            data, addr = self.sock.recvfrom(_SESSION_RECV)
        except OSError:
            return
        if addr != self.peer:
            self.server.foreign_packet(self.sock, addr)
        elif len(data) >= 4 and data[0] == 0 and data[1] == ACK:
            self._on_ack(data[2] << 8 | data[3])
        elif len(data) >= 4 and data[0] == 0 and data[1] == ERROR:
            self.finish(ABORTED)
        else:
            self.server.count_error("malformed packet")

    def _on_ack(self, wire: int) -> None:
        acked = self.acked
        block = acked + ((wire - acked) & 0xFFFF)
        if block == acked or block > self.sent:
            # A duplicate, stale or bogus ACK. Only the timer retransmits: answering
            # duplicates would double every packet from then on (sorcerer's apprentice).
            return
        self.acked = block
        if block == self.last:
            self.finish(OK)
            return
        self.tries = 0
        self.interval = self.base
        # Normally the last block of the window; an earlier one means the client lost the
        # block after it (RFC 7440), so the next window starts there either way.
        self._transmit()

    def _on_timer(self) -> None:
        if self.done:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self.tries += 1
        if self.tries > self.server.retries:
            self.finish(TIMEOUT)
            return
        self.server.count_error("retransmission")
        self.interval = min(self.interval * 2, max(self.server.max_timeout, self.base))
        self._transmit()
        self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def finish(self, result: str) -> None:
        if self.done:
            return
        self.done = True
        self.loop.remove_reader(self.sock.fileno())
        if self.timer is not None:
            self.timer.cancel()
        self.sock.close()
        self.server.sessions.pop(self.peer, None)
        blksize = self.options.get("blksize", DEFAULT_BLKSIZE)
        delivered = min(max(self.acked, 0) * blksize, self.content_size)
        self.server.record(
            Transfer(
                client=self.peer[0],
                port=self.peer[1],
                server=self.local,
                filename=self.filename,
                bytes=delivered,
                duration=self.loop.time() - self.started,
                result=result,
                options=self.options,
            )
        )
