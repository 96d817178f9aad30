"""TFTP server of the boot network: the iPXE binaries, and per-MAC files for loaders that
cannot speak HTTP, from one read-only root.

Why tftpy's codec under a loop of our own, and not tftpy's ``TftpServer``
(/work/shared/notes/tftpy.md has the measurements):

- Its loop blocks in select() on a thread of its own, so the service could not embed it in
  its event loop; ours is asyncio (stdlib or uvloop, the same code).
- One bad packet kills its whole process (a directory, ``blksize=abc``, a non-ASCII name,
  EMSGSIZE, a raising dynamic-file callback). Here every request is validated at the edge,
  and no failure of one transfer reaches the loop or another transfer.
- Its defaults are wrong for a boot network: writes accepted, symlinks out of the root
  served, first retransmission after 5 s, no ``timeout``/``windowsize``, option names
  case-sensitive, packets from strangers fed to the session.
- It spends about 20 µs of CPU per packet (debug logging, objects per packet, work per
  session on every loop turn); a boot storm is hundreds of clients at once.

tftpy's packet classes are sound, so they parse the requests and encode OACK, ERROR and
DATA. The per-packet path stays out of them: DATA packets are encoded once per (file,
blksize) and shared by every session through a content cache, so sending a block is one
``sendto()``; an ACK is four bytes read by index. Client ERROR packets are decoded here
too, because tftpy logs each one it decodes at ERROR level and every EDK2 tsize probe
ends with one.

Each transfer has its own UDP socket (its transfer ID), bound to the local address the
request arrived on (IP_PKTINFO), so replies leave from the address the client asked; it is
not connected, so a stranger's packet is seen and answered with error 5 instead of being
dropped unseen. Retransmission uses one lazy timer per session: an ACK only moves a
deadline, and the timer re-arms itself when it fires early.

Use: ``await server.start(host, port)`` binds and returns; ``await server.stop()`` ends
every transfer. ``async with server:`` only guarantees the stop (start it inside).
``python -m pxe.tftp --root DIR --port P`` runs it standalone (the benchmark does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram
from tftpy.TftpPacketFactory import TftpPacketFactory  # type: ignore[import-untyped]
from tftpy.TftpPacketTypes import (  # type: ignore[import-untyped]
    TftpPacketDAT,
    TftpPacketERR,
    TftpPacketOACK,
)

log = logging.getLogger(__name__)

# Python 3.11 does not name it; 8 is Linux's value.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_ANCILLARY_SPACE = socket.CMSG_SPACE(_PKTINFO.size)

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512
# RFC 2348's maximum; it also fits an IPv4 UDP datagram (65,507 bytes of payload).
MAX_BLKSIZE = min(65464, 65507 - 4)
# RFC 2347 keeps requests within 512 bytes; the bound caps what tftpy's parser walks.
MAX_REQUEST = 1024
# What a session reads of a datagram: an ACK is 4 bytes, and of an ERROR only its first
# 4 matter; a small buffer spares a 64 KiB allocation per packet.
_SESSION_RECV = 16

# Results: short, and a fixed set, since they label the metrics.
OK = "ok"
NOT_FOUND = "file not found"
ACCESS_VIOLATION = "access violation"
ILLEGAL = "illegal request"
TIMEOUT = "timeout"
ABORTED = "aborted by client"
DYNAMIC_FAILED = "dynamic file failed"
UNAVAILABLE = "server unavailable"
STOPPED = "server stopped"


@dataclass(frozen=True)
class Transfer:
    client: str  # client IP
    port: int  # client port
    server: str  # local address the request arrived on
    filename: str
    bytes: int  # payload bytes the client acknowledged
    duration: float  # seconds
    result: str  # "ok" or a short error description
    options: dict[str, int] = field(default_factory=dict)  # as acknowledged (OACK)


Dynamic = Callable[[str, str], Awaitable[bytes | None]]
Observer = Callable[[Transfer], None]


def _error_packet(code: int, message: str) -> bytes:
    packet = TftpPacketERR()
    packet.errorcode = code
    # tftpy encodes the message of its table for the code: give it ours.
    packet.errmsgs = {code: message.encode()}
    return bytes(packet.encode().buffer)


_UNKNOWN_TID = _error_packet(5, "Unknown transfer ID")


def _encode_blocks(data: bytes, blksize: int) -> list[bytes]:
    """Every DATA packet of a transfer; the last one is short (empty if need be)."""
    packet = TftpPacketDAT()
    blocks = []
    for index, offset in enumerate(range(0, len(data) + 1, blksize)):
        packet.blocknumber = (index + 1) & 0xFFFF  # rolls over past 65535
        packet.data = data[offset : offset + blksize]
        blocks.append(bytes(packet.encode().buffer))
    return blocks


@dataclass(frozen=True)
class _Content:
    size: int
    blocks: list[bytes]


class _Refused(Exception):
    def __init__(self, code: int, message: str, result: str) -> None:
        super().__init__(message)
        self.packet = _error_packet(code, message)
        self.result = result


class _ContentCache:
    """Encoded blocks by (file identity, mtime, size, blksize), least recently used out:
    in a boot storm everyone fetches the same binary with the same block size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._entries: OrderedDict[tuple[int, ...], _Content] = OrderedDict()

    def get(self, fd: int, st: os.stat_result, blksize: int) -> _Content:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, blksize)
        content = self._entries.get(key)
        if content is not None:
            self._entries.move_to_end(key)
            return content
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        content = _Content(len(data), _encode_blocks(data, blksize))
        if len(data) <= self._limit // 4:
            self._entries[key] = content
            self._used += len(data)
            while self._used > self._limit:
                _, evicted = self._entries.popitem(last=False)
                self._used -= evicted.size
        return content


def _negotiate(
    requested: dict[str, str], max_blksize: int, max_window: int
) -> dict[str, int]:
    """The options to acknowledge. Names are case-insensitive; unknown options and values
    that are not plain decimal numbers are ignored (RFC 2347 lets the server drop them).
    tsize is answered later, once the size is known."""
    accepted: dict[str, int] = {}
    for name, value in requested.items():
        key = name.lower()
        if not value.isdigit() or len(value) > 20:
            continue
        number = int(value)
        if key == "blksize":
            accepted[key] = max(8, min(number, max_blksize))
        elif key == "tsize":
            accepted[key] = 0
        elif key == "timeout" and 1 <= number <= 255:
            accepted[key] = number
        elif key == "windowsize" and number >= 1:
            accepted[key] = min(number, max_window)
    return accepted


class _Session:
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
        content: _Content,
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
        self.oack = b""
        if options:
            oack = TftpPacketOACK()
            oack.options = {name: str(value) for name, value in options.items()}
            self.oack = bytes(oack.encode().buffer)
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


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transfers = Counter(
            "provisioner_tftp_transfers", "TFTP requests by result.", ["result"], registry=registry
        )
        self.sent = Counter(
            "provisioner_tftp_sent_bytes", "TFTP payload bytes acknowledged.", registry=registry
        )
        self.duration = Histogram(
            "provisioner_tftp_transfer_duration_seconds",
            "Time from request to the end of a TFTP transfer.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.errors = Counter(
            "provisioner_tftp_errors",
            "TFTP errors by kind: failed transfers by result, malformed packets, packets "
            "from unknown transfer IDs, retransmissions.",
            ["kind"],
            registry=registry,
        )


class TftpServer:
    """Read-only TFTP server for one boot root. Tuning: ``timeout`` (first retransmission,
    s; doubles per retry up to ``max_timeout``), ``retries`` before giving up,
    ``dynamic_timeout`` (s) bounding the callback, ``max_blksize``, ``max_window``
    (windowsize cap), ``cache_bytes`` (encoded blocks kept for reuse)."""

    def __init__(
        self,
        root: Path,
        *,
        dynamic: Dynamic | None = None,
        observer: Observer | None = None,
        registry: CollectorRegistry | None = None,
        timeout: float = 1.0,
        max_timeout: float = 4.0,
        retries: int = 5,
        dynamic_timeout: float = 5.0,
        max_blksize: int = MAX_BLKSIZE,
        max_window: int = 64,
        cache_bytes: int = 64 << 20,
    ) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.retries = retries
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sessions: dict[tuple[str, int], _Session] = {}
        self._dynamic = dynamic
        self._observer = observer
        self._dynamic_timeout = dynamic_timeout
        self._max_blksize = max(8, min(max_blksize, MAX_BLKSIZE))
        self._max_window = max(1, min(max_window, 65535))
        self._cache = _ContentCache(cache_bytes)
        self._metrics = _Metrics(self.registry)
        self._factory = TftpPacketFactory()
        self._pending: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._sock: socket.socket | None = None
        self._root_fd = -1
        self._real_root = ""
        self._host = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "TftpServer.start() was not called"
        return self._loop

    @property
    def port(self) -> int:
        assert self._sock is not None, "TftpServer.start() was not called"
        port: int = self._sock.getsockname()[1]
        return port

    # All addresses by default: a boot server answers on every boot segment it sits on.
    async def start(
        self,
        host: str = "0.0.0.0",  # noqa: S104
        port: int = 69,
        *,
        reuse_port: bool = False,
    ) -> None:
        """Bind and return. ``reuse_port``: several processes serve one port, the kernel
        spreads the requests over them (SO_REUSEPORT); a transfer stays in its process."""
        self._loop = asyncio.get_running_loop()
        self._real_root = os.path.realpath(self.root)
        self._root_fd = os.open(self._real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # A boot storm's requests arrive at once: queue them rather than drop them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            os.close(self._root_fd)
            raise
        self._sock = sock
        self._host = host
        self._loop.add_reader(sock.fileno(), self._on_request)
        log.info("tftp: serving %s on %s:%d", self._real_root, host, self.port)

    async def stop(self) -> None:
        if self._sock is None:
            return
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for session in list(self.sessions.values()):
            session.finish(STOPPED)
        os.close(self._root_fd)

    async def __aenter__(self) -> TftpServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- the listening socket ----------------------------------------------------------

    def _on_request(self) -> None:
        sock = self._sock
        # Bounded, so a flood of requests cannot starve the transfers in flight.
        for _ in range(64):
            if sock is None:
                return
            try:
                data, ancillary, flags, addr = sock.recvmsg(MAX_REQUEST, _ANCILLARY_SPACE)
            except OSError:  # BlockingIOError when drained
                return
            try:
                self._handle_request(data, ancillary, flags, addr)
            except Exception:
                log.exception("tftp: failed to handle a request from %s:%d", *addr)
                self.count_error("server error")

    def _local_address(self, ancillary: list[tuple[int, int, bytes]]) -> str:
        for level, kind, payload in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 12:
                _ifindex, spec_dst, _addr = _PKTINFO.unpack_from(payload)
                return socket.inet_ntoa(spec_dst)
        return self._host

    def _handle_request(
        self,
        data: bytes,
        ancillary: list[tuple[int, int, bytes]],
        flags: int,
        addr: tuple[str, int],
    ) -> None:
        if len(data) < 2 or data[0] != 0 or data[1] not in (RRQ, WRQ):
            # Not a request (stray ACK/DATA/ERROR, garbage): not worth an answer.
            self.count_error("malformed packet")
            return
        if addr in self.sessions or addr in self._pending:
            return  # the client repeated its request; the transfer is under way
        started = self.loop.time()
        local = self._local_address(ancillary)
        filename = ""
        try:
            if flags & socket.MSG_TRUNC:
                raise _Refused(4, "Request too long", ILLEGAL)
            try:
                request = self._factory.parse(data)
                filename = str(request.filename)
                mode = str(request.mode)
                requested = {str(k): str(v) for k, v in request.options.items()}
            except Exception:
                # tftpy raises its own, struct's, and Unicode errors: all a bad request.
                if data[1] == WRQ:
                    raise _Refused(2, "Read-only server", ACCESS_VIOLATION) from None
                raise _Refused(4, "Malformed request", ILLEGAL) from None
            if data[1] == WRQ:
                raise _Refused(2, "Read-only server", ACCESS_VIOLATION)
            # netascii is served byte for byte: boot files are binary, and tftp-hpa's
            # client asks for netascii unless told otherwise.
            if mode not in ("octet", "netascii"):
                raise _Refused(4, "Unsupported mode", ILLEGAL)
            options = _negotiate(requested, self._max_blksize, self._max_window)
            blksize = options.get("blksize", DEFAULT_BLKSIZE)
            content = self._open(filename, blksize)
        except _Refused as refused:
            self._refuse(addr, local, filename, refused, started)
            return
        if content is not None:
            self._begin(addr, local, filename, content, options, started)
        elif self._dynamic is None:
            self._refuse(addr, local, filename, _Refused(1, "File not found", NOT_FOUND), started)
        else:
            task = self.loop.create_task(
                self._serve_dynamic(addr, local, filename, options, started)
            )
            self._pending[addr] = task
            task.add_done_callback(lambda _: self._pending.pop(addr, None))

    def _open(self, filename: str, blksize: int) -> _Content | None:
        """The file's content, or None when nothing of that name is under the root.

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
            raise _Refused(2, "Access violation", ACCESS_VIOLATION)
        real = os.path.realpath(os.path.join(self._real_root, filename))
        if not real.startswith(self._real_root + os.sep):
            raise _Refused(2, "Access violation", ACCESS_VIOLATION)
        parts = real[len(self._real_root) + 1 :].split(os.sep)
        directories: list[int] = []
        try:
            at = self._root_fd
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
            raise _Refused(2, "Access violation", ACCESS_VIOLATION) from None
        finally:
            for directory in directories:
                os.close(directory)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(2, "Not a regular file", ACCESS_VIOLATION)
            return self._cache.get(fd, st, blksize)
        finally:
            os.close(fd)

    async def _serve_dynamic(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        options: dict[str, int],
        started: float,
    ) -> None:
        assert self._dynamic is not None
        try:
            data = await asyncio.wait_for(
                self._dynamic(filename, addr[0]), self._dynamic_timeout
            )
            if data is not None and not isinstance(data, bytes):
                raise TypeError(f"dynamic file callback returned {type(data).__name__}")
        except Exception:
            log.warning("tftp: dynamic file %r for %s failed", filename, addr[0], exc_info=True)
            refused = _Refused(0, "Boot file unavailable", DYNAMIC_FAILED)
            self._refuse(addr, local, filename, refused, started)
            return
        if data is None:
            self._refuse(addr, local, filename, _Refused(1, "File not found", NOT_FOUND), started)
            return
        blocks = _encode_blocks(data, options.get("blksize", DEFAULT_BLKSIZE))
        self._begin(addr, local, filename, _Content(len(data), blocks), options, started)

    def _begin(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        content: _Content,
        options: dict[str, int],
        started: float,
    ) -> None:
        if "tsize" in options:
            options["tsize"] = content.size
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((local, 0))
        except OSError as exc:  # out of descriptors or ports
            sock.close()
            log.warning("tftp: no socket for %s:%d: %s", *addr, exc)
            refused = _Refused(0, "Server busy", UNAVAILABLE)
            self._refuse(addr, local, filename, refused, started)
            return
        session = _Session(self, sock, addr, local, filename, content, options, started)
        self.sessions[addr] = session
        session.begin()

    def _refuse(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        refused: _Refused,
        started: float,
    ) -> None:
        self._reply(refused.packet, addr, local)
        duration = self.loop.time() - started
        self.record(Transfer(addr[0], addr[1], local, filename, 0, duration, refused.result))

    def _reply(self, packet: bytes, addr: tuple[str, int], local: str) -> None:
        """Answer from the listening socket, from the address the request arrived on."""
        if self._sock is None:
            return
        ancillary = []
        if local != self._host:
            info = _PKTINFO.pack(0, socket.inet_aton(local), bytes(4))
            ancillary.append((socket.IPPROTO_IP, IP_PKTINFO, info))
        with contextlib.suppress(OSError):
            self._sock.sendmsg([packet], ancillary, 0, addr)

    # ---- shared by the sessions --------------------------------------------------------

    def foreign_packet(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """RFC 1350: a packet from the wrong transfer ID gets error 5 and changes nothing."""
        self.count_error("unknown transfer id")
        with contextlib.suppress(OSError):
            sock.sendto(_UNKNOWN_TID, addr)

    def count_error(self, kind: str) -> None:
        self._metrics.errors.labels(kind).inc()

    def record(self, transfer: Transfer) -> None:
        metrics = self._metrics
        metrics.transfers.labels(transfer.result).inc()
        metrics.sent.inc(transfer.bytes)
        metrics.duration.observe(transfer.duration)
        if transfer.result != OK:
            metrics.errors.labels(transfer.result).inc()
        log.info(
            "tftp: %s:%d %s via %s: %s, %d bytes in %.3f s%s",
            transfer.client,
            transfer.port,
            transfer.filename or "-",
            transfer.server,
            transfer.result,
            transfer.bytes,
            transfer.duration,
            f" {transfer.options}" if transfer.options else "",
        )
        if self._observer is not None:
            try:
                self._observer(transfer)
            except Exception:
                log.exception("tftp: transfer observer failed")


def main(argv: list[str] | None = None) -> int:
    """Standalone server, for benchmarks and trials; the service embeds TftpServer."""
    parser = argparse.ArgumentParser(prog="python -m pxe.tftp", description=main.__doc__)
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    # Forked before any event loop exists; the first process stops the others.
    workers: list[int] = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            workers = []
            break
        workers.append(pid)

    async def serve() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        server = TftpServer(args.root)
        await server.start(args.host, args.port, reuse_port=args.workers > 1)
        async with server:
            await stopping.wait()

    if args.uvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
