"""DHCP answers on the boot trace: the first hop of a network boot, and where a NIC's
boot address comes from, so that the TFTP transfers that follow (which name no MAC) land
on the right timeline from a machine's very first boot."""

from __future__ import annotations

from collections.abc import Sequence

from provisioner.boot.hops import HopRecorder
from provisioner.schemas import DhcpExchange
from provisioner.timeline import EventKind


def record(hops: HopRecorder, exchanges: Sequence[DhcpExchange]) -> None:
    for exchange in exchanges:
        if exchange.address and exchange.kind != "nak":
            hops.boot_ip(exchange.mac, exchange.address)
        hops.by_mac(exchange.mac, exchange.address, EventKind.BOOT_DHCP, describe(exchange))


def describe(exchange: DhcpExchange) -> str:
    """The hop in words: what was answered, to which client (its user class, iPXE for
    iPXE, else its vendor class: the firmware's architecture, or the OS's DHCP client)."""
    user, vendor = exchange.user_class, exchange.vendor_class
    client = f"{user} ({vendor})" if user and vendor else user or vendor
    to = f" to {client}" if client else ""
    on = f" on {exchange.interface}" if exchange.interface else ""
    bootfile = f", boot file {exchange.bootfile}" if exchange.bootfile else ""
    if exchange.kind == "nak":
        return f"DHCP: refused {exchange.address or 'an address'}{to}{on}"
    if exchange.kind == "proxy":
        return f"proxy DHCP: {exchange.note or 'answer'}{to}{on}{bootfile}"
    return f"DHCP: {exchange.address}{to}{on}{bootfile}"
