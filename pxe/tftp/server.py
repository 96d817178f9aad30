"""The server: its listening socket, every request validated at the edge, and the
sessions it starts. No failure of one request or transfer reaches the loop or another
transfer (docs/tftp.md lists what a single packet could do to tftpy's own server).

Each transfer's socket is bound to the local address the request arrived on
(IP_PKTINFO), so replies leave from the address the client asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram

from pxe.tftp.files import Content, ServedRoot, encode_content
from pxe.tftp.packets import (
    DEFAULT_BLKSIZE,
    MAX_BLKSIZE,
    MAX_REQUEST,
    RRQ,
    UNKNOWN_TID,
    WRQ,
    Refused,
    negotiate,
    parse_request,
)
from pxe.tftp.session import Session
from pxe.tftp.transfer import (
    ACCESS_VIOLATION,
    DYNAMIC_FAILED,
    ILLEGAL,
    NOT_FOUND,
    OK,
    STOPPED,
    UNAVAILABLE,
    Observer,
    Transfer,
)

log = logging.getLogger(__name__)

# Python 3.11 does not name it; 8 is Linux's value.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_ANCILLARY_SPACE = socket.CMSG_SPACE(_PKTINFO.size)

Dynamic = Callable[[str, str], Awaitable[bytes | None]]


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
        self.sessions: dict[tuple[str, int], Session] = {}
        self._dynamic = dynamic
        self._observer = observer
        self._dynamic_timeout = dynamic_timeout
        self._max_blksize = max(8, min(max_blksize, MAX_BLKSIZE))
        self._max_window = max(1, min(max_window, 65535))
        self._files = ServedRoot(self.root, cache_bytes)
        self._metrics = _Metrics(self.registry)
        self._pending: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._sock: socket.socket | None = None
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
        self._files.open_root()
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
            self._files.close()
            raise
        self._sock = sock
        self._host = host
        self._loop.add_reader(sock.fileno(), self._on_request)
        log.info("tftp: serving %s on %s:%d", self._files.real, host, self.port)

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
        self._files.close()

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
                raise Refused(4, "Request too long", ILLEGAL)
            try:
                request = parse_request(data)
            except ValueError:
                if data[1] == WRQ:
                    raise Refused(2, "Read-only server", ACCESS_VIOLATION) from None
                raise Refused(4, "Malformed request", ILLEGAL) from None
            filename = request.filename
            if data[1] == WRQ:
                raise Refused(2, "Read-only server", ACCESS_VIOLATION)
            # netascii is converted, as tftp-hpa does: its client asks for netascii
            # unless told otherwise, and turns the conversion back (docs/tftp.md).
            if request.mode not in ("octet", "netascii"):
                raise Refused(4, "Unsupported mode: use octet or netascii", ILLEGAL)
            netascii = request.mode == "netascii"
            options = negotiate(request.options, self._max_blksize, self._max_window)
            blksize = options.get("blksize", DEFAULT_BLKSIZE)
            content = self._files.content(filename, blksize, netascii)
        except Refused as refused:
            self._refuse(addr, local, filename, refused, started)
            return
        if content is not None:
            self._begin(addr, local, filename, content, options, started)
        elif self._dynamic is None:
            self._refuse(addr, local, filename, Refused(1, "File not found", NOT_FOUND), started)
        else:
            task = self.loop.create_task(
                self._serve_dynamic(addr, local, filename, netascii, options, started)
            )
            self._pending[addr] = task
            task.add_done_callback(lambda _: self._pending.pop(addr, None))

    async def _serve_dynamic(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        netascii: bool,
        options: dict[str, int],
        started: float,
    ) -> None:
        assert self._dynamic is not None
        try:
            data = await asyncio.wait_for(self._dynamic(filename, addr[0]), self._dynamic_timeout)
            if data is not None and not isinstance(data, bytes):
                raise TypeError(f"dynamic file callback returned {type(data).__name__}")
        except Exception:
            log.warning("tftp: dynamic file %r for %s failed", filename, addr[0], exc_info=True)
            refused = Refused(0, "Boot file unavailable", DYNAMIC_FAILED)
            self._refuse(addr, local, filename, refused, started)
            return
        if data is None:
            self._refuse(addr, local, filename, Refused(1, "File not found", NOT_FOUND), started)
            return
        content = encode_content(data, options.get("blksize", DEFAULT_BLKSIZE), netascii)
        self._begin(addr, local, filename, content, options, started)

    def _begin(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        content: Content,
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
            refused = Refused(0, "Server busy", UNAVAILABLE)
            self._refuse(addr, local, filename, refused, started)
            return
        session = Session(self, sock, addr, local, filename, content, options, started)
        self.sessions[addr] = session
        session.begin()

    def _refuse(
        self,
        addr: tuple[str, int],
        local: str,
        filename: str,
        refused: Refused,
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
            sock.sendto(UNKNOWN_TID, addr)

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
