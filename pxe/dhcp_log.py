"""DHCP exchanges read from dnsmasq's log, for the boot trace: the first hop of a network
boot, and the one that tells which address a machine's later TFTP requests come from.

dnsmasq says nothing about DHCP to other programs in proxy mode (its ``dhcp-script`` runs
for leases only), but logs every exchange in both modes. With ``log-dhcp`` each line of an
exchange starts with the transaction id, so the client's vendor and user class (logged
before the answer) and the boot file (logged after) can be put together with the answer:

    1005114880 vendor class: PXEClient:Arch:00007:UNDI:003016
    1005114880 DHCPACK(br0) 10.213.0.105 52:54:00:5e:00:01
    1005114880 bootfile name: snponly.efi

Without ``log-dhcp`` the answer lines alone are read. Only answers that hand out an
address or a boot file become hops (DHCPACK and DHCPNAK in full mode, PXE in proxy mode);
discover, offer and request add nothing an operator needs on a timeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# "[Dec  3 16:43:17 ]dnsmasq-dhcp[20416]: [1005114880 ]rest"
_LINE = re.compile(r"dnsmasq-dhcp\[\d+\]: (?:(?P<xid>\d+) )?(?P<rest>.*)$")
_ANSWER = re.compile(
    r"(?P<kind>DHCPACK|DHCPNAK|PXE)\((?P<interface>[^)]*)\) "
    r"(?:(?P<address>\d{1,3}(?:\.\d{1,3}){3}) )?(?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})"
    r"(?: (?P<note>.*))?$",
    re.IGNORECASE,
)
_CONTEXT = re.compile(r"(?P<key>vendor class|user class|bootfile name): (?P<value>.*)$")


@dataclass
class DhcpExchange:
    """One answer dnsmasq gave a machine, with what the machine said it was."""

    mac: str
    interface: str
    kind: str  # "ack", "nak" or "proxy"
    address: str = ""
    vendor_class: str = ""
    user_class: str = ""
    bootfile: str = ""
    note: str = ""

    def report(self) -> dict[str, str]:
        return asdict(self)


class DhcpLogReader:
    """Turns dnsmasq log lines into exchanges. dnsmasq logs each packet's lines
    together, so a transaction is complete when a line of another one comes, or at
    :meth:`flush` (the end of what has been written)."""

    def __init__(self) -> None:
        self._xid = ""
        self._context: dict[str, str] = {}
        self._answer: DhcpExchange | None = None

    def feed(self, line: str) -> list[DhcpExchange]:
        match = _LINE.search(line.rstrip("\n"))
        if match is None:
            return []
        xid, rest = match["xid"], match["rest"]
        answer = _ANSWER.match(rest)
        if xid is None:  # no log-dhcp: the answer line is all there is
            return [] if answer is None else [_exchange(answer, {})]
        done = []
        if xid != self._xid:
            done = self.flush()
            self._xid, self._context = xid, {}
        if answer is not None:
            if self._answer is not None:
                done.append(self._answer)
            self._answer = _exchange(answer, self._context)
        elif (context := _CONTEXT.match(rest)) is not None:
            key = context["key"].replace(" ", "_")
            self._context[key] = context["value"].strip()
            if self._answer is not None and key == "bootfile_name":
                self._answer.bootfile = self._context[key]
        return done

    def flush(self) -> list[DhcpExchange]:
        """The answer read last. What its client said is kept: the rest of its
        transaction may still come."""
        done = [] if self._answer is None else [self._answer]
        self._answer = None
        return done


def _exchange(match: re.Match[str], context: dict[str, str]) -> DhcpExchange:
    kind = {"DHCPACK": "ack", "DHCPNAK": "nak", "PXE": "proxy"}[match["kind"].upper()]
    return DhcpExchange(
        mac=match["mac"].lower(),
        interface=match["interface"],
        kind=kind,
        address=match["address"] or "",
        vendor_class=context.get("vendor_class", ""),
        user_class=context.get("user_class", ""),
        bootfile=context.get("bootfile_name", ""),
        note=(match["note"] or "").strip(),
    )


class DhcpLogFollower:
    """Follows dnsmasq's log file as ``tail -F`` does, from its end when made: a file
    rotated away or truncated is read again from its start. Exchanges go to ``deliver``
    in batches, once per ``interval`` at most, the last of a burst one interval later."""

    def __init__(
        self,
        path: Path,
        deliver: Callable[[list[DhcpExchange]], None],
        *,
        interval: float = 0.5,
    ) -> None:
        self.path = path
        self._deliver = deliver
        self._interval = interval
        self._reader = DhcpLogReader()
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._partial = ""
        self._missing_logged = False
        self._start_at_end()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.poll()

    def poll(self) -> None:
        """Read what was written since the last poll and deliver the exchanges it
        completes. The last exchange is complete once a poll finds nothing new: dnsmasq
        may have been writing it when this one read."""
        lines = self._new_lines()
        exchanges = [exchange for line in lines for exchange in self._reader.feed(line)]
        if not lines:
            exchanges += self._reader.flush()
        if exchanges:
            self._deliver(exchanges)

    def _start_at_end(self) -> None:
        try:
            status = self.path.stat()
        except OSError:
            return
        self._identity, self._offset = (status.st_dev, status.st_ino), status.st_size

    def _new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as file:
                status = os.fstat(file.fileno())
                identity = (status.st_dev, status.st_ino)
                if identity != self._identity or status.st_size < self._offset:
                    self._identity, self._offset, self._partial = identity, 0, ""
                file.seek(self._offset)
                data = file.read()
        except OSError as exc:
            if not self._missing_logged:
                log.warning(
                    "DHCP log %s cannot be read (%s); DHCP hops are missing from the boot "
                    "trace until it can (dnsmasq's log-facility must name this file)",
                    self.path,
                    exc.strerror or exc,
                )
                self._missing_logged = True
            return []
        self._missing_logged = False
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # the line dnsmasq is still writing, if any
        return lines
