"""The dnsmasq configuration: every variant passes the real `dnsmasq --test`, says what
the boot chain needs, and bad options are refused with a sentence each."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pxe.dnsmasq import ConfigError, parse, render

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
API = "http://10.20.0.2:8080"

PROXY: dict[str, Any] = {
    "mode": "proxy",
    "network": "10.20.0.0/24",
    "api_url": API,
    "tftp_server": "10.20.0.3",
}
FULL: dict[str, Any] = {
    **PROXY,
    "mode": "full",
    "range_start": "10.20.0.100",
    "range_end": "10.20.0.199",
}
VARIANTS: dict[str, dict[str, Any]] = {
    "proxy": PROXY,
    "proxy-snponly-arm64": {**PROXY, "snponly": True, "arm64_file": "arm64/ipxe.efi"},
    "proxy-interface": {**PROXY, "interfaces": ["eth1"], "listen_addresses": ["10.20.0.3"]},
    "full": FULL,
    "full-everything": {
        **FULL,
        "snponly": True,
        "arm64_file": "ipxe-arm64.efi",
        "http_boot_url": "https://10.20.0.2/boot/assets/ipxe.efi",
        "interfaces": ["enp3s0", "br-prov*"],
        "lease_time": "infinite",
        "router": "10.20.0.1",
        "dns_servers": ["10.20.0.1", "9.9.9.9"],
    },
}


def dnsmasq() -> str:
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but dnsmasq is not installed")
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_dnsmasq_accepts_every_variant(variant: str, tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(render(parse(**VARIANTS[variant])))
    # --conf-file replaces /etc/dnsmasq.conf, so the host's own configuration plays no part.
    result = subprocess.run(
        [dnsmasq(), "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    assert "syntax check OK" in result.stdout + result.stderr


def test_both_modes_tag_clients_by_architecture_and_ipxe() -> None:
    for args in (PROXY, FULL):
        config = lines(render(parse(**args)))
        for arch, tag in ((0, "bios"), (7, "efi64"), (9, "efi64"), (16, "efi-http")):
            assert f"dhcp-match=set:{tag},option:client-arch,{arch}" in config
        assert "dhcp-match=set:ipxe,175" in config
        assert "dhcp-userclass=set:ipxe,iPXE" in config
        assert "dhcp-vendorclass=set:http-client,HTTPClient" in config
        assert f"dhcp-boot=tag:ipxe,{API}/boot/bootstrap.ipxe" in config
        # DHCP only: no DNS, and dnsmasq's own TFTP stays off (pxe serve does TFTP).
        assert "port=0" in config
        assert not any(line.startswith(("enable-tftp", "tftp-root")) for line in config)


def test_proxy_mode_points_firmware_at_the_tftp_server() -> None:
    config = lines(render(parse(**PROXY, arm64_file="arm64.efi")))
    assert "dhcp-range=10.20.0.0,proxy,255.255.255.0" in config
    assert 'pxe-service=tag:!ipxe,x86PC,"iPXE (BIOS)",undionly.kpxe,10.20.0.3' in config
    assert 'pxe-service=tag:!ipxe,x86-64_EFI,"iPXE (UEFI x64)",ipxe.efi,10.20.0.3' in config
    assert 'pxe-service=tag:!ipxe,BC_EFI,"iPXE (UEFI x64)",ipxe.efi,10.20.0.3' in config
    assert 'pxe-service=tag:!ipxe,ARM64_EFI,"iPXE (UEFI arm64)",arm64.efi,10.20.0.3' in config
    assert "dhcp-pxe-vendor=PXEClient,HTTPClient" in config
    # iPXE must wait for this proxy's offer: no ipxe.no-pxedhcp here.
    assert not any("encap:175" in line for line in config)
    assert not any(
        line.startswith(("dhcp-authoritative", "dhcp-option=option:")) for line in config
    )


def test_full_mode_serves_addresses_and_boot_files() -> None:
    config = lines(render(parse(**FULL, router="10.20.0.1", dns_servers=["10.20.0.1", "1.1.1.1"])))
    assert "dhcp-range=10.20.0.100,10.20.0.199,255.255.255.0,12h" in config
    assert "dhcp-authoritative" in config
    assert "dhcp-option=option:router,10.20.0.1" in config
    assert "dhcp-option=option:dns-server,10.20.0.1,1.1.1.1" in config
    assert "dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe,,10.20.0.3" in config
    assert "dhcp-boot=tag:efi64,tag:!ipxe,ipxe.efi,,10.20.0.3" in config
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" in config
    assert not any(line.startswith("pxe-service") for line in config)


def test_full_mode_without_router_or_dns_sends_none() -> None:
    config = lines(render(parse(**FULL)))
    assert "dhcp-option=option:router" in config
    assert "dhcp-option=option:dns-server" in config


def test_snponly_swaps_the_uefi_binary() -> None:
    config = render(parse(**FULL, snponly=True))
    assert "dhcp-boot=tag:efi64,tag:!ipxe,snponly.efi,,10.20.0.3" in config
    assert "ipxe.efi,," not in config


def test_uefi_http_boot_gets_a_url_and_vendor_class_without_tftp() -> None:
    for args in (PROXY, FULL):
        config = lines(render(parse(**args)))
        http = [line for line in config if "tag:efi-http" in line]
        assert http == [
            "dhcp-option-force=tag:efi-http,tag:http-client,tag:!ipxe,"
            "option:vendor-class,HTTPClient",
            f"dhcp-boot=tag:efi-http,tag:http-client,tag:!ipxe,{API}/boot/assets/ipxe.efi",
        ]
    custom = render(parse(**PROXY, http_boot_url="http://10.20.0.9/efi/ipxe.efi"))
    assert "tag:!ipxe,http://10.20.0.9/efi/ipxe.efi\n" in custom


def test_interfaces_bind_and_arm64_is_optional() -> None:
    config = lines(render(parse(**PROXY, interfaces=["eth1"], listen_addresses=["10.20.0.3"])))
    bind = [line for line in config if line.startswith(("interface", "listen", "bind"))]
    assert bind == ["interface=eth1", "listen-address=10.20.0.3", "bind-interfaces"]
    assert not any("client-arch,11" in line for line in config)


def test_every_block_is_explained() -> None:
    text = render(parse(**FULL))
    for block in text.strip().split("\n\n"):
        assert block.startswith("#"), block


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"network": "10.20.0.0/33"}, "is not an IPv4 network"),
        ({"network": "10.20.0.7/24"}, "did you mean 10.20.0.0/24"),
        ({"api_url": "ftp://10.20.0.2"}, "is not an http:// or https:// URL"),
        ({"api_url": "http://127.0.0.1:8080"}, "booting machines cannot reach 127.0.0.1"),
        ({"api_url": "http://10.20.0.2/a,b"}, "contains ','"),
        ({"api_url": "http://user:pw@10.20.0.2"}, "credentials"),
        ({"api_url": "http://10.20.0.2/" + "x" * 120}, "the DHCP boot file field holds 127"),
        ({"tftp_server": "10.20.0.300"}, "--tftp-server: '10.20.0.300' is not an IPv4 address"),
        ({"tftp_server": "0.0.0.0"}, "cannot be reached"),  # noqa: S104
        ({"interfaces": ["eth 1"]}, "is not a network interface name"),
        ({"arm64_file": "../etc/passwd"}, "is not a file name under the TFTP root"),
        ({"http_boot_url": "http://10.20.0.2/"}, "names no file"),
        ({"mode": "relay"}, "--mode: 'relay' is not one of proxy, full"),
        ({"router": "10.20.0.1"}, "only for --mode full"),
        ({"mode": "full"}, "needs --range-start and --range-end"),
    ],
)
def test_bad_options_are_refused_with_the_flag_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**{**PROXY, **changes})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"range_start": "10.21.0.1"}, "--range-start: 10.21.0.1 is not a host address"),
        ({"range_end": "10.20.0.255"}, "--range-end: 10.20.0.255 is not a host address"),
        ({"range_start": "10.20.0.200"}, "comes after --range-end"),
        ({"router": "10.30.0.1"}, "is not on 10.20.0.0/24"),
        ({"router": "10.20.0.150"}, "lies inside the lease range"),
        ({"tftp_server": "10.20.0.120"}, "--tftp-server: 10.20.0.120 lies inside"),
        ({"lease_time": "90s"}, "at least 2 minutes"),
        ({"lease_time": "soon"}, "is not a duration"),
        ({"dns_servers": ["dns.example"]}, "--dns-server: 'dns.example' is not an IPv4"),
    ],
)
def test_full_mode_checks_the_range(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**{**FULL, **changes})
    assert message in str(caught.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(mode="full", network="x", api_url="y", tftp_server="z")
    assert len(caught.value.problems) == 4
