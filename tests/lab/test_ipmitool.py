"""The lab's BMCs as Debian's ipmitool sees them (`-I lanplus`)."""

from __future__ import annotations

import dataclasses
import time

from tests.lab.conftest import Lab, ipmitool


def test_power_status_on_off_cycle(lab: Lab) -> None:
    node = lab.take()
    assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is off"
    # A real BMC refuses to cycle a machine that is off.
    refused = ipmitool(node, "power", "cycle", check=False)
    assert refused.returncode != 0
    assert "Command not supported in present state" in refused.stderr
    assert "Up/On" in ipmitool(node, "power", "on").stdout
    assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is on"
    assert "Cycle" in ipmitool(node, "power", "cycle").stdout
    assert "Reset" in ipmitool(node, "power", "reset").stdout
    assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is on"
    assert "Down/Off" in ipmitool(node, "power", "off").stdout
    assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is off"
    # On, cycle and reset each booted the firmware.
    assert lab.status(node)["boots"] == ["disk", "disk", "disk"]


def test_power_soft_shuts_down_a_running_machine(lab: Lab) -> None:
    node = lab.take()
    assert ipmitool(node, "power", "soft", check=False).returncode != 0  # already off
    ipmitool(node, "power", "on")
    assert "Soft" in ipmitool(node, "power", "soft").stdout
    assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is off"


def test_bootdev_pxe_is_for_the_next_boot_only(lab: Lab) -> None:
    node = lab.take()
    assert "Set Boot Device to pxe" in ipmitool(node, "chassis", "bootdev", "pxe").stdout
    flags = ipmitool(node, "chassis", "bootparam", "get", "5").stdout
    assert "Boot parameter data: 8004000000" in flags
    assert "- Boot Flag Valid" in flags
    assert "- Options apply to only next boot" in flags
    assert "- BIOS PC Compatible (legacy) boot" in flags
    assert "- Boot Device Selector : Force PXE" in flags
    ipmitool(node, "power", "on")
    # The firmware used the request and cleared it, as real firmware does.
    assert "- Boot Flag Invalid" in ipmitool(node, "chassis", "bootparam", "get", "5").stdout
    assert lab.status(node)["boots"] == ["pxe"]


def test_bootdev_disk_persistent_efi(lab: Lab) -> None:
    node = lab.take()
    ipmitool(node, "chassis", "bootdev", "disk", "options=persistent,efiboot")
    flags = ipmitool(node, "chassis", "bootparam", "get", "5").stdout
    assert "Boot parameter data: e008000000" in flags
    assert "- Options apply to all future boots" in flags
    assert "- BIOS EFI boot" in flags
    assert "- Boot Device Selector : Force Boot from default Hard-Drive" in flags
    ipmitool(node, "power", "on")
    ipmitool(node, "power", "cycle")
    # Persistent: still set after two boots.
    assert (
        "Boot parameter data: e008000000"
        in ipmitool(node, "chassis", "bootparam", "get", "5").stdout
    )
    assert lab.status(node)["boots"] == ["disk-uefi", "disk-uefi"]


def test_mc_info(lab: Lab) -> None:
    out = ipmitool(lab.nodes[0], "mc", "info").stdout
    assert "Manufacturer ID           : 32473" in out
    assert "Product ID                : 1 (0x0001)" in out
    assert "Firmware Revision         : 2.47" in out
    assert "IPMI Version              : 2.0" in out
    assert "FRU Inventory Device" in out


def test_fru_print(lab: Lab) -> None:
    out = ipmitool(lab.nodes[1], "fru", "print").stdout
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in out.splitlines())
    }
    assert fields["Product Manufacturer"] == "Provisioner Lab"
    assert fields["Product Name"] == "Virtual Server VS-1"
    assert fields["Product Serial"].startswith("VS1")
    assert fields["Product Asset Tag"] == "LAB-00002"
    assert fields["Board Mfg"] == "Provisioner Lab"
    assert fields["Board Product"] == "VS-1 Mainboard"
    assert fields["Board Serial"].startswith("MB")
    assert fields["Chassis Type"] == "Rack Mount Chassis"


def test_sdr_list_follows_power(lab: Lab) -> None:
    node = lab.take()
    off = ipmitool(node, "sdr", "list").stdout
    assert "Inlet Temp       | 2" in off
    assert "CPU Temp         | no reading        | ns" in off
    ipmitool(node, "power", "on")
    rows = {
        name.strip(): (reading.strip(), state.strip())
        for name, reading, state in (
            line.split("|") for line in ipmitool(node, "sdr", "list").stdout.splitlines()
        )
    }
    assert set(rows) == {"Inlet Temp", "CPU Temp", "Fan1", "PSU1 12V"}
    assert all(state == "ok" for _, state in rows.values())
    assert rows["Fan1"][0].endswith("RPM")
    assert 11.5 <= float(rows["PSU1 12V"][0].split()[0]) <= 12.5
    assert 30 <= int(rows["CPU Temp"][0].split()[0]) <= 60


def test_unknown_user_fails_fast(lab: Lab) -> None:
    stranger = dataclasses.replace(lab.nodes[2], username="nobody")
    started = time.monotonic()
    # -v shows why; against a stock pyghmi BMC ipmitool would retry for ~14 s.
    result = ipmitool(stranger, "power", "status", check=False, extra=("-v",))
    assert time.monotonic() - started < 2.0
    assert result.returncode != 0
    assert "unauthorized name" in result.stderr.lower()
