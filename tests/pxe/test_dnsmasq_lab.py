"""``provisioner pxe dnsmasq-config --lab``: what an isolated lab network adds to the
full-mode configuration, so that a network boot is not 3 + 15 s slower than it must be."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from pxe.dnsmasq import ConfigError, parse, render
from tests.pxe.test_dnsmasq import FULL, PROXY, dnsmasq, lines

LAB_LINES = ["no-ping", "enable-ra", "dhcp-range=::,constructor:br0,ra-only"]


def test_lab_adds_no_ping_and_router_advertisements_on_its_interfaces(tmp_path: Path) -> None:
    config = lines(render(parse(**FULL, interfaces=["br0"], lab=True)))
    assert [line for line in config if line in LAB_LINES or "ra-only" in line] == LAB_LINES
    # The IPv4 lease range is still the one of the full mode.
    assert "dhcp-range=10.20.0.100,10.20.0.199,255.255.255.0,12h" in config
    conf = tmp_path / "lab.conf"
    conf.write_text(render(parse(**FULL, interfaces=["br0", "br1"], lab=True)))
    result = subprocess.run(
        [dnsmasq(), "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    assert "dhcp-range=::,constructor:br1,ra-only" in conf.read_text()


def test_without_lab_nothing_of_it_is_rendered() -> None:
    config = lines(render(parse(**FULL, interfaces=["br0"])))
    assert not any(line in LAB_LINES or "ra-only" in line for line in config)


@pytest.mark.parametrize("args", [{**FULL}, {**PROXY, "interfaces": ["br0"]}])
def test_lab_needs_full_mode_and_an_interface(args: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**args, lab=True)  # type: ignore[arg-type]
    assert "--lab: only for --mode full with --interface" in str(caught.value)


def test_the_cli_option_renders_it() -> None:
    args = ["pxe", "dnsmasq-config", "--mode", "full", "--network", "10.30.0.0/24"]
    args += ["--tftp-server", "10.30.0.2", "--api", "http://10.30.0.2:8080"]
    args += ["--range-start", "10.30.0.50", "--range-end", "10.30.0.99"]
    args += ["--interface", "br0", "--lab"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [line for line in lines(result.stdout) if line in LAB_LINES] == LAB_LINES
