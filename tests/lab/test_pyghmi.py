"""The lab's BMCs as pyghmi's client (what the service's IPMI driver uses) sees them."""

from __future__ import annotations

import time

import pytest
from pyghmi.exceptions import IpmiException
from pyghmi.ipmi.command import Command

from tests.lab.conftest import Lab, Node


def connect(node: Node, password: str | None = None) -> Command:
    # Bytes credentials: with str, pyghmi's session cache never matches (trap 3).
    secret = (password or node.password).encode()
    return Command("127.0.0.1", userid=node.username.encode(), password=secret, port=node.port)


def test_login_falls_back_to_cipher_suite_3(lab: Lab) -> None:
    # pyghmi proposes suite 17 first; the BMC's 0x11 answer makes it retry with 3.
    started = time.monotonic()
    command = connect(lab.take())
    assert time.monotonic() - started < 1.0
    assert command.get_power() == {"powerstate": "off"}


def test_power(lab: Lab) -> None:
    command = connect(lab.take())
    assert command.set_power("on", wait=True)["powerstate"] == "on"
    assert command.get_power() == {"powerstate": "on"}
    command.set_power("reset")
    command.set_power("boot")  # pyghmi's "cycle if on, else on"
    assert command.set_power("off", wait=True)["powerstate"] == "off"
    with pytest.raises(IpmiException, match="present state"):
        command.set_power("reset")


def test_bootdev_round_trip(lab: Lab) -> None:
    command = connect(lab.take())
    command.set_bootdev("network", persist=True, uefiboot=True)
    assert command.get_bootdev() == {"bootdev": "network", "persistent": True, "uefimode": True}
    command.set_bootdev("hd")
    assert command.get_bootdev() == {"bootdev": "hd", "persistent": False, "uefimode": False}
    command.set_bootdev("default")
    assert command.get_bootdev() == {"bootdev": "default", "persistent": True}


def test_inventory(lab: Lab) -> None:
    inventory = dict(connect(lab.nodes[3]).get_inventory())
    system = inventory["System"]
    assert system["Manufacturer"] == "Provisioner Lab"
    assert system["Product name"] == "Virtual Server VS-1"
    assert system["Serial Number"].startswith("VS1")
    assert system["Asset Number"] == "LAB-00004"
    assert system["Board product name"] == "VS-1 Mainboard"
    assert system["Board serial number"].startswith("MB")
    assert system["Manufacturer ID"] == 32473
    assert system["firmware_version"] == "2.47"
    assert len(system["UUID"]) == 36


def test_sensors_and_health(lab: Lab) -> None:
    command = connect(lab.take())
    command.set_power("on")
    readings = {reading.name: reading for reading in command.get_sensor_data()}
    assert set(readings) == {"Inlet Temp", "CPU Temp", "Fan1", "PSU1 12V"}
    assert 18 <= readings["Inlet Temp"].value <= 28
    assert readings["Fan1"].units == "RPM"
    assert readings["Fan1"].value > 3000
    assert readings["PSU1 12V"].value == pytest.approx(12.0, abs=0.3)
    assert command.get_health() == {"badreadings": [], "health": 0}


def test_unknown_user_and_wrong_password_fail_fast(lab: Lab) -> None:
    node = lab.nodes[4]
    started = time.monotonic()
    with pytest.raises(IpmiException, match="Unauthorized name"):
        Command("127.0.0.1", userid=b"nobody", password=b"x", port=node.port)
    with pytest.raises(IpmiException, match="Incorrect password"):
        connect(node, password="not-the-password")
    assert time.monotonic() - started < 1.0
