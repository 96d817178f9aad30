"""Many Redfish BMCs in one process: one asyncio event loop in one thread, a listening
TCP socket per BMC (its own port, as real BMCs have their own address), HTTPS with the
lab's certificate chosen per connection, so that one BMC can be told to show another.

Why this shape (docs/lab.md, "Redfish BMCs"): epoll has no descriptor ceiling, unlike
the select() under pyghmi's server, so a thousand listening sockets and their
connections cost one thread; TLS is set up per accepted connection
(``StreamWriter.start_tls``) rather than per listening socket, which is what lets a
single BMC change its certificate and a ``no-answer`` BMC accept connections without
ever starting the handshake. uvicorn would serve many sockets too, but with one TLS
context for all of them and no say before the HTTP layer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Sequence

from lab import faults
from lab.redfish.http import Request, Response, Silence, hang, serve_connection
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import Certificate

_HANDSHAKE_SECONDS = 10.0
_BACKLOG = 128

log = logging.getLogger(__name__)


class RedfishServer:
    """Serves `RedfishBmc` objects from a thread of its own until `close`. Without a
    certificate it speaks plain HTTP (for debugging with curl or a browser)."""

    def __init__(self, certificate: Certificate | None) -> None:
        self.bmcs: list[RedfishBmc] = []
        self._context = certificate.server_context() if certificate else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="redfish", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def scheme(self) -> str:
        return "https" if self._context is not None else "http"

    def start(self) -> None:
        _raise_descriptor_limit()
        self._thread.start()

    def add(self, bmc: RedfishBmc) -> None:
        """Listen for ``bmc`` on its address and port; OSError if that cannot be had.
        Call after `start`, from any thread but the server's."""
        family = socket.AF_INET6 if ":" in bmc.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bmc.address, bmc.port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        future = asyncio.run_coroutine_threadsafe(self._listen(bmc, sock), self._loop)
        future.result(timeout=30)
        self.bmcs.append(bmc)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _listen(self, bmc: RedfishBmc, sock: socket.socket) -> None:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None  # a connection is served by a task of its own
            self._connections[task] = writer
            try:
                await self._connection(bmc, reader, writer)
            except asyncio.CancelledError:
                # Only `_shutdown` cancels; ending normally spares asyncio's streams
                # (3.11) an error when they ask the task for its exception.
                return
            except Exception:
                # One broken connection must not take the BMC (or its neighbours) down.
                log.exception("Redfish BMC %s: connection failed", bmc.machine.name)
            finally:
                writer.close()
                self._connections.pop(task, None)

        self._servers.append(await asyncio.start_server(connected, sock=sock))

    async def _connection(
        self, bmc: RedfishBmc, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if bmc.gate.fault.kind is faults.Kind.NO_ANSWER:
            # Accepted by the kernel, never answered: not even the TLS handshake.
            await hang(reader)
            return
        shared = self._context
        if shared is None:
            await serve_connection(reader, writer, bmc.handle)
            return
        context = bmc.tls_context(shared)
        try:
            await writer.start_tls(context, ssl_handshake_timeout=_HANDSHAKE_SECONDS)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return  # a client that refuses the certificate, or a port scanner

        async def handle(request: Request) -> Response | Silence:
            # A BMC whose certificate is replaced restarts its web server: connections
            # made with the old one end rather than go on under it.
            if bmc.tls_context(shared) is not context:
                return Silence.CLOSE
            return await bmc.handle(request)

        await serve_connection(reader, writer, handle)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        # Keep-alive and hung connections would otherwise wait for their clients.
        connections = dict(self._connections)
        for task, writer in connections.items():
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def _raise_descriptor_limit() -> None:
    """A socket per BMC plus its clients' connections: more than the usual soft limit
    of 1,024 descriptors for a big lab, so take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def probe(address: str, ports: Sequence[int], timeout: float = 10.0) -> set[int]:
    """The ports among ``ports`` that accept a TCP connection, trying again every
    0.1 s: a listening BMC accepts at once, whether or not it will answer. Not to be
    called from a running event loop."""
    answered: set[int] = set()

    async def check(port: int, limit: asyncio.Semaphore) -> None:
        while True:
            async with limit:
                try:
                    _, writer = await asyncio.open_connection(address, port)
                except OSError:
                    writer = None
                if writer is not None:
                    writer.close()
                    answered.add(port)
                    return
            await asyncio.sleep(0.1)

    async def check_all() -> None:
        # A bounded number at once: a thousand simultaneous connects overflow backlogs.
        limit = asyncio.Semaphore(64)
        await asyncio.wait_for(asyncio.gather(*(check(p, limit) for p in ports)), timeout)

    with contextlib.suppress(TimeoutError):
        asyncio.run(check_all())
    return answered
