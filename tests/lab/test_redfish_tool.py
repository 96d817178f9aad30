"""The DMTF's own client, redfishtool, drives the lab's Redfish BMCs of every dialect:
power on, off and reset, the boot override once and continuous, UEFI and Legacy, with
basic authentication or a session, following HPE-like tasks and sending Dell-like
BMCs the ETag they want."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import faults
from lab.machine import BootDevice, BootFlags, build_machine
from lab.redfish.dialects import Dialect
from lab.redfish.server import RedfishServer
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import make_certificate

USER, PASSWORD = "admin", "lab-secret"


def _redfishtool() -> str:
    # Installed into the environment with the test dependencies (pyproject.toml).
    beside = Path(sys.executable).with_name("redfishtool")
    if beside.exists():
        return str(beside)
    found = shutil.which("redfishtool")
    if found is None:
        pytest.fail("redfishtool is missing: pip install -e '.[test]'")
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[RedfishServer]:
    running = RedfishServer(make_certificate("127.0.0.1"))
    running.start()
    yield running
    running.close()


def _bmc(server: RedfishServer, dialect: Dialect) -> RedfishBmc:
    index = len(server.bmcs) + 1
    name = f"tool-{index:02d}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    machine = build_machine(name, index, 3, [f"52:54:00:cc:00:{index:02x}"])
    bmc = RedfishBmc(
        machine,
        USER,
        PASSWORD,
        faults.FaultGate(3, name),
        address="127.0.0.1",
        port=port,
        dialect=dialect,
    )
    server.add(bmc)
    return bmc


def redfishtool(bmc: RedfishBmc, *args: str) -> subprocess.CompletedProcess[str]:
    # Supermicro-like BMCs refuse basic authentication: redfishtool logs in instead.
    auth = "Session" if bmc.dialect is Dialect.SUPERMICRO else "Basic"
    command = [
        _redfishtool(),
        "-r",
        f"127.0.0.1:{bmc.port}",
        "-u",
        USER,
        "-p",
        PASSWORD,
        "-S",
        "Always",
        "-A",
        auth,
        "-T",
        "10",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


@pytest.mark.parametrize("dialect", list(Dialect))
def test_redfishtool_drives_power(server: RedfishServer, dialect: Dialect) -> None:
    bmc = _bmc(server, dialect)
    shown = json.loads(redfishtool(bmc, "Systems", "-1", "get").stdout)
    assert shown["Manufacturer"] == bmc.machine.inventory.vendor
    assert shown["PowerState"] == "Off"
    redfishtool(bmc, "Systems", "-1", "reset", "On")
    # redfishtool waits for an HPE-like BMC's task to complete before it returns.
    assert bmc.machine.power_on
    assert json.loads(redfishtool(bmc, "Systems", "-1", "get").stdout)["PowerState"] == "On"
    redfishtool(bmc, "Systems", "-1", "reset", "ForceRestart")
    redfishtool(bmc, "Systems", "-1", "reset", "PowerCycle")
    assert bmc.machine.boots == ["disk", "disk", "disk"]
    redfishtool(bmc, "Systems", "-1", "reset", "ForceOff")
    assert not bmc.machine.power_on


@pytest.mark.parametrize("dialect", list(Dialect))
def test_redfishtool_sets_the_boot_override(server: RedfishServer, dialect: Dialect) -> None:
    bmc = _bmc(server, dialect)
    # redfishtool reads the System first and PATCHes with its ETag, which Dell-like
    # BMCs require.
    redfishtool(bmc, "Systems", "-1", "setBootOverride", "Once", "Pxe")
    assert bmc.machine.boot == BootFlags(True, False, False, BootDevice.PXE)
    uefi = json.dumps({"Boot": {"BootSourceOverrideMode": "UEFI"}})
    redfishtool(bmc, "Systems", "-1", "patch", uefi)
    assert bmc.machine.boot == BootFlags(True, False, True, BootDevice.PXE)
    redfishtool(bmc, "Systems", "-1", "setBootOverride", "Continuous", "Hdd")
    legacy = json.dumps({"Boot": {"BootSourceOverrideMode": "Legacy"}})
    redfishtool(bmc, "Systems", "-1", "patch", legacy)
    assert bmc.machine.boot == BootFlags(True, True, False, BootDevice.DISK)
    boot = json.loads(redfishtool(bmc, "Systems", "-1", "get").stdout)["Boot"]
    assert boot["BootSourceOverrideEnabled"] == "Continuous"
    assert boot["BootSourceOverrideTarget"] == "Hdd"


def test_redfishtool_reads_the_inventory(server: RedfishServer) -> None:
    bmc = _bmc(server, Dialect.GENERIC)
    nics = json.loads(redfishtool(bmc, "Systems", "-1", "EthernetInterfaces", "-a").stdout)
    macs = {member["MACAddress"] for member in nics["Members"]}
    assert macs == set(bmc.machine.macs)
    processors = json.loads(redfishtool(bmc, "Systems", "-1", "Processors", "-a").stdout)
    assert len(processors["Members"]) == 2
    manager = json.loads(redfishtool(bmc, "Managers", "-1", "get").stdout)
    assert manager["ManagerType"] == "BMC"
    root = json.loads(redfishtool(bmc, "root").stdout)
    assert root["Systems"] == {"@odata.id": "/redfish/v1/Systems"}
