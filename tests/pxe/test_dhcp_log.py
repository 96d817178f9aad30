"""DHCP answers read from dnsmasq's log (pxe/dhcp_log.py). The full-mode lines are
dnsmasq 2.90's, from a lab VM's network boot with ``log-dhcp`` (tests/lab/test_vms.py
boots against the same configuration and checks the hops on the timeline)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pxe.dhcp_log import DhcpExchange, DhcpLogFollower, DhcpLogReader

PREFIX = "Dec  3 16:43:17 dnsmasq-dhcp[20416]: "
# One exchange of iPXE with dnsmasq, trimmed of most option lines.
IPXE_EXCHANGE = [
    "1005114880 available DHCP range: 10.213.0.100 -- 10.213.0.199",
    "1005114880 vendor class: PXEClient:Arch:00000:UNDI:002001",
    "1005114880 user class: iPXE",
    "1005114880 DHCPREQUEST(br0) 10.213.0.105 52:54:00:5e:00:01 ",
    "1005114880 tags: bios, ipxe, br0",
    "1005114880 DHCPACK(br0) 10.213.0.105 52:54:00:5E:00:01 ",
    "1005114880 requested options: 1:netmask, 3:router, 6:dns-server, 7:log-server, ",
    "1005114880 bootfile name: http://10.213.0.1:36095/boot/bootstrap.ipxe",
    "1005114880 next server: 10.213.0.1",
    "1005114880 sent size:  1 option: 53 message-type  5",
]
# The installed system's DHCP client, later.
OS_EXCHANGE = [
    "590047528 vendor class: udhcp 1.35.0",
    "590047528 DHCPREQUEST(br0) 10.213.0.105 52:54:00:5e:00:01 ",
    "590047528 DHCPACK(br0) 10.213.0.105 52:54:00:5e:00:01 ",
    "590047528 next server: 10.213.0.1",
]
NOISE = ["RTR-ADVERT(br0) fd00:213::", "DHCP, sockets bound exclusively to interface br0"]

IPXE_ANSWER = DhcpExchange(
    mac="52:54:00:5e:00:01",
    interface="br0",
    kind="ack",
    address="10.213.0.105",
    vendor_class="PXEClient:Arch:00000:UNDI:002001",
    user_class="iPXE",
    bootfile="http://10.213.0.1:36095/boot/bootstrap.ipxe",
)
OS_ANSWER = DhcpExchange(
    mac="52:54:00:5e:00:01",
    interface="br0",
    kind="ack",
    address="10.213.0.105",
    vendor_class="udhcp 1.35.0",
)


def logged(*lines: str) -> list[str]:
    return [f"{PREFIX}{line}\n" for line in lines]


def read(lines: list[str]) -> list[DhcpExchange]:
    reader = DhcpLogReader()
    out = [exchange for line in lines for exchange in reader.feed(line)]
    return out + reader.flush()


def test_an_answer_is_put_together_with_its_client_and_boot_file() -> None:
    lines = logged(*NOISE[:1], *IPXE_EXCHANGE, *NOISE, *OS_EXCHANGE)
    assert read(lines) == [IPXE_ANSWER, OS_ANSWER]


def test_discovers_offers_and_requests_are_not_answers() -> None:
    offer = [
        "77 DHCPDISCOVER(br0) 52:54:00:5e:00:02 ",
        "77 DHCPOFFER(br0) 10.213.0.106 52:54:00:5e:00:02 ",
        "77 bootfile name: snponly.efi",
    ]
    assert read(logged(*offer)) == []


def test_a_refusal_and_answers_without_log_dhcp() -> None:
    lines = logged(
        "DHCPNAK(br0) 10.213.0.107 52:54:00:5e:00:03 wrong network",
        "DHCPACK(eth1) 192.0.2.10 52:54:00:5e:00:04 web-01",
    )
    assert read(lines) == [
        DhcpExchange(
            mac="52:54:00:5e:00:03",
            interface="br0",
            kind="nak",
            address="10.213.0.107",
            note="wrong network",
        ),
        DhcpExchange(
            mac="52:54:00:5e:00:04",
            interface="eth1",
            kind="ack",
            address="192.0.2.10",
            note="web-01",
        ),
    ]


def test_proxy_mode_answers() -> None:
    # dnsmasq's proxy DHCP logs its offer without an address, its boot server answer
    # with the address the client already has and the boot file.
    lines = logged(
        "12 vendor class: PXEClient:Arch:00007:UNDI:003016",
        "12 PXE(br0) 52:54:00:5e:00:05 proxy",
        "13 vendor class: PXEClient:Arch:00007:UNDI:003016",
        "13 PXE(br0) 192.0.2.20 52:54:00:5e:00:05 snponly.efi",
    )
    vendor = "PXEClient:Arch:00007:UNDI:003016"
    assert read(lines) == [
        DhcpExchange("52:54:00:5e:00:05", "br0", "proxy", vendor_class=vendor, note="proxy"),
        DhcpExchange(
            "52:54:00:5e:00:05",
            "br0",
            "proxy",
            address="192.0.2.20",
            vendor_class=vendor,
            note="snponly.efi",
        ),
    ]


def test_other_programs_lines_and_garbage_are_ignored() -> None:
    lines = [
        "Dec  3 16:43:14 dnsmasq[20416]: started, version 2.90 DNS disabled\n",
        "Dec  3 16:43:17 dnsmasq-tftp[20416]: sent /tftp/snponly.efi to 10.213.0.105\n",
        "\x00\xff not a log line\n",
        f"{PREFIX}1 DHCPACK(br0) 10.213.0.1 not-a-mac\n",
    ]
    assert read(lines) == []


class Collected:
    def __init__(self) -> None:
        self.exchanges: list[DhcpExchange] = []

    def __call__(self, exchanges: list[DhcpExchange]) -> None:
        self.exchanges += exchanges


def follower(path: Path) -> tuple[DhcpLogFollower, Collected]:
    collected = Collected()
    follow = DhcpLogFollower(path, collected, interval=0.01)
    return follow, collected


def test_following_starts_at_the_end_and_waits_for_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    log.write_text("".join(logged(*OS_EXCHANGE)))  # before the follower: not replayed
    follow, collected = follower(log)

    async def scenario() -> None:
        running = asyncio.create_task(follow.run())
        await asyncio.sleep(0.05)
        text = "".join(logged(*IPXE_EXCHANGE))
        cut = text.index("DHCPACK") + 10
        with log.open("a") as out:
            out.write(text[:cut])  # dnsmasq is still writing the answer's line
        await asyncio.sleep(0.05)
        assert collected.exchanges == []
        with log.open("a") as out:
            out.write(text[cut:])
        await asyncio.sleep(0.05)
        running.cancel()

    asyncio.run(scenario())
    assert collected.exchanges == [IPXE_ANSWER]


def test_a_rotated_or_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    log.write_text("".join(logged(*NOISE)))
    follow, collected = follower(log)
    follow.poll()
    follow.poll()
    # logrotate moves the file away; dnsmasq opens a new one.
    log.rename(tmp_path / "dnsmasq.log.1")
    log.write_text("".join(logged(*OS_EXCHANGE)))
    follow.poll()
    follow.poll()
    assert collected.exchanges == [OS_ANSWER]
    # copytruncate empties it in place, and dnsmasq writes on.
    log.write_text("")
    follow.poll()
    with log.open("a") as out:
        out.write("".join(logged(*IPXE_EXCHANGE)))
    follow.poll()
    follow.poll()
    assert collected.exchanges == [OS_ANSWER, IPXE_ANSWER]


def test_a_missing_log_is_reported_once_and_read_once_it_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "dnsmasq.log"
    follow, collected = follower(log)
    with caplog.at_level(logging.WARNING, logger="pxe.dhcp_log"):
        follow.poll()
        follow.poll()
    assert len(caplog.records) == 1
    assert "log-facility must name this file" in caplog.text
    log.write_text("".join(logged(*OS_EXCHANGE)))
    follow.poll()
    follow.poll()
    assert collected.exchanges == [OS_ANSWER]
