"""dnsmasq configuration for a boot network: DHCP only, in one of two modes.

- proxy: beside a site's own DHCP server, which keeps leasing addresses; dnsmasq adds
  the boot information for PXE clients (proxyDHCP).
- full: the DHCP server of an isolated provisioning network.

Either way dnsmasq answers no DNS and serves no TFTP: ``provisioner pxe serve`` serves
the iPXE binaries, and iPXE fetches everything else from the API over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["proxy", "full"]
MODES: tuple[Mode, ...] = ("proxy", "full")

BIOS_FILE = "undionly.kpxe"
UEFI_FILES = ("ipxe.efi", "snponly.efi")

# Firmware copies the boot file name into the 128-byte BOOTP `file` field (NUL included).
_MAX_BOOT_NAME = 127
# dnsmasq splits its arguments on commas and reads '#' as a comment; iPXE expands ${...}
# in the file name it is given. None of these belongs in a boot URL.
_URL_UNSAFE = frozenset(",\"'#\\${}")
_LEASE_RE = re.compile(r"^(?:infinite|(\d+)([smhdw]?))$")
_LEASE_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Linux interface names (IFNAMSIZ 16), with dnsmasq's trailing wildcard.
_INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")


class ConfigError(ValueError):
    """Invalid options; ``problems`` holds one sentence per bad option."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class DnsmasqConfig:
    mode: Mode
    network: IPv4Network
    api_url: str
    tftp_server: IPv4Address
    http_boot_url: str
    uefi_file: str = "ipxe.efi"
    arm64_file: str | None = None
    interfaces: tuple[str, ...] = ()
    listen_addresses: tuple[IPv4Address, ...] = ()
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None
    lease_time: str = "12h"
    router: IPv4Address | None = None
    dns_servers: tuple[IPv4Address, ...] = ()
    lab: bool = False  # an isolated lab network: no ping before an offer, IPv6 RA

    @property
    def bootstrap_url(self) -> str:
        return f"{self.api_url}/boot/bootstrap.ipxe"


class _Problems:
    """Collects every bad option, so that the operator fixes them in one go."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def address(self, value: str, flag: str) -> IPv4Address | None:
        try:
            address = IPv4Address(value.strip())
        except AddressValueError:
            self.add(f"{flag}: {value!r} is not an IPv4 address")
            return None
        if address.is_unspecified or address.is_loopback or address.is_multicast:
            self.add(f"{flag}: {address} cannot be reached by booting machines")
            return None
        return address

    def network(self, value: str) -> IPv4Network | None:
        try:
            return IPv4Network(value.strip())
        except (AddressValueError, NetmaskValueError):
            self.add(f"--network: {value!r} is not an IPv4 network such as 10.0.0.0/24")
        except ValueError:
            loose = IPv4Network(value.strip(), strict=False)
            self.add(f"--network: {value!r} has host bits set; did you mean {loose}?")
        return None

    def url(self, value: str, flag: str, *, base: bool) -> str | None:
        url = value.strip()
        if base:
            url = url.rstrip("/")
        parts = urlsplit(url)
        bad = sorted({c for c in url if c in _URL_UNSAFE or not c.isprintable() or c == " "})
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(f"{flag}: {value!r} is not an http:// or https:// URL")
        elif bad or not url.isascii():
            shown = " ".join(repr(c) for c in bad) or "non-ASCII characters"
            self.add(f"{flag}: {value!r} contains {shown}, which the boot chain cannot carry")
        elif parts.username or parts.password:
            self.add(f"{flag}: credentials in the URL would be sent to every booting machine")
        elif base and (parts.query or parts.fragment):
            self.add(f"{flag}: give the service's base URL, without ?query or #fragment")
        elif not base and parts.path in ("", "/"):
            self.add(f"{flag}: {value!r} names no file")
        elif parts.hostname in ("localhost", "0.0.0.0") or parts.hostname.startswith("127."):  # noqa: S104
            self.add(
                f"{flag}: booting machines cannot reach {parts.hostname}; use an address "
                "of this host on the boot network"
            )
        else:
            return url
        return None

    def boot_name(self, value: str, flag: str) -> None:
        if len(value) > _MAX_BOOT_NAME:
            self.add(
                f"{flag}: {value!r} is {len(value)} characters; the DHCP boot file field "
                f"holds {_MAX_BOOT_NAME}"
            )


def _lease_ok(value: str) -> bool:
    match = _LEASE_RE.match(value)
    if not match:
        return False
    if value == "infinite":
        return True
    # dnsmasq's minimum lease is two minutes.
    return int(match.group(1)) * _LEASE_SECONDS[match.group(2)] >= 120


def parse(
    *,
    mode: str,
    network: str,
    api_url: str,
    tftp_server: str,
    snponly: bool = False,
    arm64_file: str | None = None,
    http_boot_url: str | None = None,
    interfaces: Sequence[str] = (),
    listen_addresses: Sequence[str] = (),
    range_start: str | None = None,
    range_end: str | None = None,
    lease_time: str = "12h",
    router: str | None = None,
    dns_servers: Sequence[str] = (),
    lab: bool = False,
) -> DnsmasqConfig:
    """Validate operator input into a config; raises :class:`ConfigError` listing all
    problems at once."""
    p = _Problems()
    if mode not in MODES:
        p.add(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    net = p.network(network)
    api = p.url(api_url, "--api", base=True)
    tftp = p.address(tftp_server, "--tftp-server")
    http_boot = (
        p.url(http_boot_url, "--http-boot-url", base=False)
        if http_boot_url is not None
        else (f"{api}/boot/assets/ipxe.efi" if api else None)
    )
    for name, flag in (
        (api and f"{api}/boot/bootstrap.ipxe", "--api"),
        (http_boot, "--http-boot-url"),
    ):
        if name:
            p.boot_name(name, flag)
    if arm64_file is not None and (not _FILE_RE.match(arm64_file) or ".." in arm64_file.split("/")):
        p.add(f"--arm64-file: {arm64_file!r} is not a file name under the TFTP root")
    for interface in interfaces:
        if not _INTERFACE_RE.match(interface):
            p.add(f"--interface: {interface!r} is not a network interface name")
    listens = tuple(p.address(a, "--listen-address") for a in listen_addresses)

    full_only = {"--range-start": range_start, "--range-end": range_end, "--router": router}
    start = end = gateway = None
    dns: tuple[IPv4Address | None, ...] = ()
    if mode == "proxy":
        given = [flag for flag, value in full_only.items() if value is not None]
        if dns_servers:
            given.append("--dns-server")
        if given:
            p.add(
                f"{', '.join(given)}: only for --mode full; in proxy mode the site's DHCP "
                "server hands out addresses, routes and DNS"
            )
    elif mode == "full":
        if range_start is None or range_end is None:
            p.add("--mode full needs --range-start and --range-end: the addresses to lease")
        else:
            start = p.address(range_start, "--range-start")
            end = p.address(range_end, "--range-end")
        if router is not None:
            gateway = p.address(router, "--router")
        if net and gateway and gateway not in net:
            p.add(f"--router: {gateway} is not on {net}; nodes could not reach it")
        dns = tuple(p.address(a, "--dns-server") for a in dns_servers)
        if not _lease_ok(lease_time):
            p.add(
                f"--lease-time: {lease_time!r} is not a duration of at least 2 minutes "
                "such as 30m, 12h, 1d or infinite"
            )
        if net and start and end:
            fixed = [("--router", gateway), ("--tftp-server", tftp)]
            fixed += [("--listen-address", a) for a in listens]
            _check_range(p, net, start, end, fixed)

    if lab and (mode != "full" or not interfaces):
        p.add(
            "--lab: only for --mode full with --interface: it skips the address-in-use "
            "check nobody else's network may skip, and advertises the interfaces' IPv6 prefix"
        )
    if p.items:
        raise ConfigError(p.items)
    # Each is set whenever no problem was recorded.
    assert net is not None
    assert api is not None
    assert tftp is not None
    assert http_boot is not None
    return DnsmasqConfig(
        mode="full" if mode == "full" else "proxy",
        network=net,
        api_url=api,
        tftp_server=tftp,
        http_boot_url=http_boot,
        uefi_file="snponly.efi" if snponly else "ipxe.efi",
        arm64_file=arm64_file,
        interfaces=tuple(interfaces),
        listen_addresses=tuple(a for a in listens if a),
        range_start=start,
        range_end=end,
        lease_time=lease_time,
        router=gateway,
        dns_servers=tuple(a for a in dns if a),
        lab=lab,
    )


def _check_range(
    p: _Problems,
    net: IPv4Network,
    start: IPv4Address,
    end: IPv4Address,
    fixed: list[tuple[str, IPv4Address | None]],
) -> None:
    # /31 and /32 have no network or broadcast address to keep out (RFC 3021).
    reserved = () if net.prefixlen >= 31 else (net.network_address, net.broadcast_address)
    for flag, bound in (("--range-start", start), ("--range-end", end)):
        if bound not in net or bound in reserved:
            p.add(f"{flag}: {bound} is not a host address of {net}")
    if start > end:
        p.add(f"--range-start {start} comes after --range-end {end}")
        return
    for flag, address in fixed:
        if address is not None and start <= address <= end:
            p.add(
                f"{flag}: {address} lies inside the lease range {start}-{end}; "
                "dnsmasq would hand it to a node"
            )


def _comment(text: str) -> list[str]:
    return [f"# {line}" if line else "#" for line in text.strip().splitlines()]


def _block(text: str, *lines: str) -> list[str]:
    return ["", *_comment(text), *lines]


def render(config: DnsmasqConfig) -> str:
    """The configuration file, commented for the operator who will read it."""
    c = config
    out = _comment(
        f"""
dnsmasq configuration for a provisioner boot network ({c.mode} mode), written by
`provisioner pxe dnsmasq-config`. Regenerate it rather than edit it.
Check it:  dnsmasq --test --conf-file=THIS_FILE
Run it:    dnsmasq --keep-in-foreground --conf-file=THIS_FILE
"""
    )
    out += _block(
        f"""
DHCP only. No DNS (port 0), and no TFTP: `provisioner pxe serve` on {c.tftp_server}
serves the iPXE binaries. dhcp-no-override keeps the boot file name in the BOOTP file
field, the one place every firmware looks. Uncomment log-dhcp to log every exchange;
with log-facility=FILE too, `provisioner pxe serve --dhcp-log FILE` puts each answer on
the boot trace (docs/boot-network.md).
""",
        "port=0",
        "dhcp-no-override",
        "#log-dhcp",
    )
    if c.interfaces or c.listen_addresses:
        out += _block(
            """
Answer only here. bind-interfaces lets other DHCP servers on this host (libvirt's
dnsmasq, say) keep their own interfaces.
""",
            *(f"interface={name}" for name in c.interfaces),
            *(f"listen-address={address}" for address in c.listen_addresses),
            "bind-interfaces",
        )
    out += _range_block(c)
    if c.lab:
        out += _block(
            """
An isolated lab network (--lab), for boots that take seconds, not twenty. Offer a new
address at once instead of pinging it for 3 s first: nothing else hands out addresses
here. Advertise the interfaces' IPv6 prefix (they need an IPv6 address, a ULA will do):
without a router advertisement on the link iPXE waits 13-16 s for IPv6 autoconfiguration.
""",
            "no-ping",
            "enable-ra",
            *(f"dhcp-range=::,constructor:{name},ra-only" for name in c.interfaces),
        )
    out += _block(
        """
Who is asking. DHCP option 93 (client architecture): 0 BIOS, 7 and 9 UEFI x64,
11 UEFI arm64, 16 UEFI x64 HTTP boot. iPXE identifies itself by sending option 175 and
the user class "iPXE"; it gets the script URL instead of another copy of itself.
""",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        *(["dhcp-match=set:arm64,option:client-arch,11"] if c.arm64_file else []),
        "dhcp-match=set:efi-http,option:client-arch,16",
        "dhcp-vendorclass=set:http-client,HTTPClient",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
    )
    out += _proxy_boot(c) if c.mode == "proxy" else _full_boot(c)
    return "\n".join(out) + "\n"


def _range_block(c: DnsmasqConfig) -> list[str]:
    if c.mode == "proxy":
        return _block(
            f"""
Proxy DHCP on {c.network}: the site's DHCP server keeps leasing addresses; this one
only adds boot information to the offers PXE clients receive.
""",
            f"dhcp-range={c.network.network_address},proxy,{c.network.netmask}",
        )
    lines = _block(
        f"""
The only DHCP server of the provisioning network {c.network}: leases
{c.range_start}-{c.range_end} for {c.lease_time}. Authoritative, so a machine whose lease
dnsmasq forgot (a new lease file, a reinstall) gets an answer at once.
""",
        f"dhcp-range={c.range_start},{c.range_end},{c.network.netmask},{c.lease_time}",
        "dhcp-authoritative",
    )
    # Empty options suppress dnsmasq's default of naming its own host, which neither
    # routes nor (with port=0) answers DNS.
    router = f"option:router,{c.router}" if c.router else "option:router"
    dns = ",".join(str(a) for a in c.dns_servers)
    lines += _block(
        "Default route and DNS servers for the nodes (an empty option sends none).",
        f"dhcp-option={router}",
        f"dhcp-option=option:dns-server{',' + dns if dns else ''}",
    )
    return lines


def _proxy_boot(c: DnsmasqConfig) -> list[str]:
    tftp = c.tftp_server
    arm = (
        [f'pxe-service=tag:!ipxe,ARM64_EFI,"iPXE (UEFI arm64)",{c.arm64_file},{tftp}']
        if c.arm64_file
        else []
    )
    return [
        *_block(
            f"""
PXE firmware (not iPXE yet): one boot menu entry per architecture, so the firmware
boots it at once, fetching iPXE by TFTP from {tftp}.
""",
            f'pxe-service=tag:!ipxe,x86PC,"iPXE (BIOS)",{BIOS_FILE},{tftp}',
            f'pxe-service=tag:!ipxe,BC_EFI,"iPXE (UEFI x64)",{c.uefi_file},{tftp}',
            f'pxe-service=tag:!ipxe,x86-64_EFI,"iPXE (UEFI x64)",{c.uefi_file},{tftp}',
            *arm,
        ),
        *_block(
            """
iPXE: the bootstrap script over HTTP, which chains to the node's own script by MAC.
iPXE must wait for this proxy offer, so ipxe.no-pxedhcp (175.176) is not sent here.
""",
            f"dhcp-boot=tag:ipxe,{c.bootstrap_url}",
        ),
        *_block(
            """
UEFI HTTP boot: the firmware downloads iPXE itself over HTTP, no TFTP. It accepts
only offers carrying vendor class HTTPClient, and dnsmasq answers proxy requests only
from the vendor classes named in dhcp-pxe-vendor.
""",
            "dhcp-pxe-vendor=PXEClient,HTTPClient",
            "dhcp-option-force=tag:efi-http,tag:http-client,tag:!ipxe,option:vendor-class,HTTPClient",
            f"dhcp-boot=tag:efi-http,tag:http-client,tag:!ipxe,{c.http_boot_url}",
        ),
    ]


def _full_boot(c: DnsmasqConfig) -> list[str]:
    tftp = c.tftp_server
    arm = [f"dhcp-boot=tag:arm64,tag:!ipxe,{c.arm64_file},,{tftp}"] if c.arm64_file else []
    return [
        *_block(
            f"""
PXE firmware (not iPXE yet): fetch iPXE by TFTP from {tftp} (next-server).
""",
            f"dhcp-boot=tag:bios,tag:!ipxe,{BIOS_FILE},,{tftp}",
            f"dhcp-boot=tag:efi64,tag:!ipxe,{c.uefi_file},,{tftp}",
            *arm,
        ),
        *_block(
            """
iPXE: skip its wait for proxy DHCP offers (ipxe.no-pxedhcp; there are none on this
network), then fetch the bootstrap script over HTTP, which chains to the node's own
script by MAC.
""",
            "dhcp-option=tag:ipxe,encap:175,176,1b",
            f"dhcp-boot=tag:ipxe,{c.bootstrap_url}",
        ),
        *_block(
            """
UEFI HTTP boot: the firmware downloads iPXE itself over HTTP, no TFTP. It accepts
only offers that carry vendor class HTTPClient.
""",
            "dhcp-option-force=tag:efi-http,tag:http-client,tag:!ipxe,option:vendor-class,HTTPClient",
            f"dhcp-boot=tag:efi-http,tag:http-client,tag:!ipxe,{c.http_boot_url}",
        ),
    ]
