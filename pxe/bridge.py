"""The pxe process's link to the provisioner API: per-node TFTP files fetched on demand,
and every finished transfer and DHCP answer reported back as a boot hop.

A TFTP transfer must never wait on, or fail because of, the API's health: the reports
go through a bounded in-memory queue that a background task drains in batches, and
when the API is slow or down the oldest reports are dropped and counted. A dynamic
file the API cannot supply is "file not found" to the client, which retries. An
outage is logged once when it starts and once when it ends, not per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from provisioner import __version__
from pxe.dhcp_log import DhcpExchange
from pxe.tftp import Transfer

log = logging.getLogger(__name__)

# Loader configuration files are a few KiB; anything far larger is a misrouted request.
MAX_DYNAMIC_BYTES = 4 << 20

# Each kind of report: the route that takes it and the body's list field.
_TFTP = ("/boot/trace/tftp", "transfers")
_DHCP = ("/boot/trace/dhcp", "exchanges")
_Entry = tuple[tuple[str, str], dict[str, Any]]


def _tftp_path(filename: str) -> str | None:
    """The file name as URL path segments, or None when it could climb out of
    /boot/tftp/ (the TFTP server refuses those names too; this does not rely on it)."""
    parts = filename.lstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(quote(part, safe="") for part in parts)


class _Health:
    """Whether the API answered last time: failures are logged on the change only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0

    def failed(self, what: str, reason: str) -> None:
        if self.failures == 0:
            log.warning(
                "pxe: the provisioner at %s failed to %s: %s; per-node TFTP files are "
                "unavailable and transfer reports are queued until it answers",
                self.url,
                what,
                reason,
            )
        self.failures += 1

    def answered(self) -> None:
        if self.failures:
            log.warning(
                "pxe: the provisioner at %s answers again (%d requests failed meanwhile)",
                self.url,
                self.failures,
            )
            self.failures = 0


class ApiBridge:
    """``dynamic_file`` is the TFTP server's ``dynamic`` callback, ``observe`` its
    ``observer``. Use as ``async with ApiBridge(url, token) as bridge:``, which runs the
    report flusher; leaving it sends what is queued (for up to ``close_timeout`` s)."""

    def __init__(
        self,
        api_url: str,
        token: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 3.0,
        flush_interval: float = 0.5,
        batch_size: int = 100,
        queue_size: int = 10_000,
        max_backoff: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        headers = {"User-Agent": f"provisioner-pxe/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.api_url = api_url.rstrip("/")
        # The TFTP server gives up on a dynamic file after 5 s; answer well within that.
        self._http = httpx.AsyncClient(
            base_url=self.api_url, headers=headers, timeout=timeout, transport=transport
        )
        self._health = _Health(self.api_url)
        self._queue: deque[_Entry] = deque(maxlen=queue_size)
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._drops_reported = 0
        self.dropped = 0
        self.sent = 0

    async def __aenter__(self) -> ApiBridge:
        self._flusher = asyncio.create_task(self._run(), name="pxe-report-flusher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                while self._queue and await self.flush():
                    pass
        if self._queue:
            log.warning("pxe: %d transfer reports not delivered at shutdown", len(self._queue))
        await self._http.aclose()

    # ---- dynamic files -----------------------------------------------------------------

    async def dynamic_file(self, filename: str, client_ip: str) -> bytes | None:
        """The API's content for a file not in the TFTP root; None means "not found"."""
        path = _tftp_path(filename)
        if path is None:
            return None
        try:
            async with self._http.stream(
                "GET", f"/boot/tftp/{path}", params={"client": client_ip}
            ) as response:
                if response.status_code == httpx.codes.NOT_FOUND:
                    self._health.answered()
                    return None
                if response.status_code != httpx.codes.OK:
                    self._health.failed("supply a TFTP file", f"HTTP {response.status_code}")
                    return None
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DYNAMIC_BYTES:
                        log.warning(
                            "pxe: refused %r from the API: over %d bytes",
                            filename,
                            MAX_DYNAMIC_BYTES,
                        )
                        return None
        except httpx.HTTPError as exc:
            self._health.failed("supply a TFTP file", str(exc) or type(exc).__name__)
            return None
        self._health.answered()
        return bytes(body)

    # ---- transfer reports --------------------------------------------------------------

    def observe(self, transfer: Transfer) -> None:
        """Queue a finished transfer's report; never blocks, never raises."""
        self._report(_TFTP, transfer.report())

    def observe_dhcp(self, exchanges: list[DhcpExchange]) -> None:
        """Queue DHCP answers read from dnsmasq's log; never blocks, never raises."""
        for exchange in exchanges:
            self._report(_DHCP, exchange.report())

    def _report(self, kind: tuple[str, str], report: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque discards its oldest entry on append
        self._queue.append((kind, report))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> bool:
        """Send one batch (reports of one kind); False when the API did not take it (it
        stays queued)."""
        if not self._queue:
            return True
        kind = self._queue[0][0]
        batch: list[_Entry] = []
        while self._queue and self._queue[0][0] == kind and len(batch) < self._batch_size:
            batch.append(self._queue.popleft())
        route, field = kind
        try:
            response = await self._http.post(route, json={field: [r for _, r in batch]})
        except httpx.HTTPError as exc:
            self._health.failed("take transfer reports", str(exc) or type(exc).__name__)
            self._requeue(batch)
            return False
        status = response.status_code
        if status >= 500 or status == httpx.codes.TOO_MANY_REQUESTS:
            self._health.failed("take transfer reports", f"HTTP {status}")
            self._requeue(batch)
            return False
        self._health.answered()
        if status >= 400:
            # Resending cannot help: a refused token or a report the API rejects.
            self.dropped += len(batch)
            log.error(
                "pxe: the provisioner refused %d transfer reports (HTTP %d)%s",
                len(batch),
                status,
                "; give pxe serve an operator token (--token or PROVISIONER_TOKEN)"
                if status in (401, 403)
                else "",
            )
            return True
        self.sent += len(batch)
        return True

    def _requeue(self, batch: list[_Entry]) -> None:
        # Back at the front, in order; when reports arrived meanwhile and the queue is
        # full, the batch's oldest go, as observe() would have dropped them.
        assert self._queue.maxlen is not None
        room = self._queue.maxlen - len(self._queue)
        kept = batch[max(0, len(batch) - room) :]
        self.dropped += len(batch) - len(kept)
        self._queue.extendleft(reversed(kept))

    def _report_drops(self) -> None:
        if self.dropped > self._drops_reported:
            log.warning(
                "pxe: %d transfer reports dropped so far (the API was slow or down)",
                self.dropped,
            )
            self._drops_reported = self.dropped

    async def _run(self) -> None:
        delay = self._flush_interval
        while True:
            if delay > self._flush_interval:
                # Backing off while the API is down: a full queue must not turn each
                # new report into another failing request.
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            delivered = True
            while delivered and self._queue:
                delivered = await self.flush()
                if len(self._queue) < self._batch_size:
                    break
            self._report_drops()
            delay = self._flush_interval if delivered else min(self._max_backoff, delay * 2)
