"""The IPMI driver against a real BMC on UDP (tests/bmc/conftest.py): what only IPMI has
(cipher suites, FRU and SDR facts, sensors, pyghmi's traps). What the IPMI and Redfish
drivers share (power, boot device, faults) is tested once for both in
tests/bmc/test_driver_behaviour.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyghmi.ipmi.private.session as pyghmi_session
import pytest

from lab import faults
from lab.bmc import LabBmc
from lab.machine import build_machine
from lab.packet_loop import PacketLoop
from provisioner.bmc import BmcError, ErrorKind, PowerAction, Target
from provisioner.bmc.ipmi import IpmiDriver

TargetFor = Callable[..., Target]


@pytest.fixture
def driver(bmc: Any, target_for: TargetFor) -> Iterator[IpmiDriver]:
    d = IpmiDriver(target_for(bmc))
    yield d
    d.close()


def _fails(kind: ErrorKind, fn: Callable[..., Any], *args: Any) -> tuple[BmcError, float]:
    started = time.monotonic()
    with pytest.raises(BmcError) as info:
        fn(*args)
    elapsed = time.monotonic() - started
    assert info.value.kind is kind, str(info.value)
    for arg in args:
        if isinstance(arg, Target):
            assert arg.password not in str(info.value)
    return info.value, elapsed


def test_set_power_does_not_wait_for_the_machine(bmc: Any, target_for: TargetFor) -> None:
    driver = IpmiDriver(target_for(bmc))
    started = time.monotonic()
    for action in (PowerAction.ON, PowerAction.OFF) * 5:
        driver.set_power(action)
    assert time.monotonic() - started < 1.0
    driver.close()


def test_inventory_has_every_fact_key(driver: IpmiDriver) -> None:
    facts = driver.inventory().facts
    assert set(facts) == {
        "manufacturer",
        "product",
        "serial",
        "asset_tag",
        "board_manufacturer",
        "board_product",
        "board_serial",
        "firmware",
        "device_id",
        "guid",
        "macs",
    }
    assert facts["firmware"] == "1.00"
    assert facts["device_id"] == {"manufacturer_id": 0, "product_id": 0, "device_revision": 0}
    assert facts["macs"] == []


def test_health_where_the_bmc_has_no_sensors_says_so(driver: IpmiDriver) -> None:
    err, _ = _fails(ErrorKind.UNSUPPORTED, driver.health)
    assert "does not support" in str(err)


@pytest.mark.parametrize("suite", [3, 17])
def test_both_cipher_suites_log_in(bmc: Any, suite: int, target_for: TargetFor) -> None:
    driver = IpmiDriver(target_for(bmc, cipher_suite=suite))
    assert driver.power_state() == "off"
    driver.close()


def test_unknown_cipher_suite_is_refused_up_front(bmc: Any, target_for: TargetFor) -> None:
    err, _ = _fails(ErrorKind.UNSUPPORTED, IpmiDriver, target_for(bmc, cipher_suite=99))
    assert "3 (SHA-1) or 17" in str(err)


def test_wrong_password_is_auth_within_a_second(bmc: Any, target_for: TargetFor) -> None:
    err, elapsed = _fails(ErrorKind.AUTH, IpmiDriver, target_for(bmc, password="nope"))
    assert elapsed < 1.0
    assert "refused the credentials for user 'admin'" in str(err)
    assert "nope" not in str(err)


def test_unknown_user_on_a_silent_bmc_stops_at_the_timeout(bmc: Any, target_for: TargetFor) -> None:
    err, elapsed = _fails(
        ErrorKind.TIMEOUT, IpmiDriver, target_for(bmc, username="nobody", timeout=1.0)
    )
    assert elapsed < 1.5
    assert "check the username" in str(err)


def test_nothing_listening_is_unreachable_within_the_timeout(
    bmc: Any, target_for: TargetFor, free_port: int
) -> None:
    target = target_for(bmc, port=free_port, timeout=1.0)
    err, elapsed = _fails(ErrorKind.UNREACHABLE, IpmiDriver, target)
    assert elapsed < 1.5
    assert f"No answer from the BMC at 127.0.0.1:{target.port}" in str(err)


def test_a_stock_bmc_that_ignores_the_suite_is_a_protocol_error_not_a_crash(
    stock_bmc: Any, target_for: TargetFor
) -> None:
    stock = stock_bmc
    target = target_for(stock, cipher_suite=17, timeout=1.0)
    err, _ = _fails(ErrorKind.PROTOCOL, IpmiDriver, target)
    assert "try cipher suite 3" in str(err)
    # Proposing suite 3 straight away works with the same BMC.
    driver = IpmiDriver(target_for(stock, cipher_suite=3))
    assert driver.power_state() == "on"
    driver.close()


def test_a_stale_session_that_breaks_late_leaves_the_next_session_its_answers(
    bmc: Any, target_for: TargetFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyghmi drops a session whose keepalive is 15 s overdue from its table without
    # marking it broken, and may give the next session to that BMC the same socket; when
    # the stale one is finally marked broken, its logout must not take the next
    # session's entry with it (seen in CI: "a session other than the one just opened").
    stale = IpmiDriver(target_for(bmc))
    state = stale.power_state()
    with pyghmi_session.util.protect(pyghmi_session.KEEPALIVE_SESSIONS):
        pyghmi_session.Session.keepalive_sessions[stale._session]["timeout"] -= 60
    sock = stale._session.socket

    def least_used_socket(cls: Any, server: Any = None, forbiddensockets: Any = ()) -> Any:
        # pyghmi picks the least used socket; with other tests' sockets around, make
        # sure it is this one.
        cls.socketpool[sock] += 1
        return sock

    monkeypatch.setattr(pyghmi_session.Session, "_assignsocket", classmethod(least_used_socket))
    fresh = IpmiDriver(target_for(bmc))
    stale._session._mark_broken()
    assert fresh.power_state() == state
    fresh.close()


def test_a_closed_driver_fails_at_once(bmc: Any, target_for: TargetFor) -> None:
    driver = IpmiDriver(target_for(bmc))
    driver.close()
    _, elapsed = _fails(ErrorKind.UNREACHABLE, driver.power_state)
    assert elapsed < 0.5


# --- against the lab's virtual BMC: FRU, SDR and sensors ------------------------------

_lab_loop: PacketLoop | None = None


def _lab_bmc(free_port: int) -> LabBmc:
    """A lab BMC in this process, served beside the driver's sessions."""
    global _lab_loop
    if _lab_loop is None:
        _lab_loop = PacketLoop()
        threading.Thread(target=_lab_loop.run, name="lab-bmcs", daemon=True).start()
    machine = build_machine("lab-1", 0, 7, ["52:54:00:00:00:01"])
    gate = faults.FaultGate(7, "lab-1")
    lab = LabBmc(machine, "admin", LAB_PASSWORD, gate, _lab_loop, "127.0.0.1", free_port)
    _lab_loop.bmcs.append(lab)
    return lab


LAB_PASSWORD = "lab-pw"


def _lab_target(lab: LabBmc, **overrides: Any) -> Target:
    settings: dict[str, Any] = {
        "address": "127.0.0.1",
        "username": "admin",
        "password": LAB_PASSWORD,
        "port": lab.port,
        "timeout": 2.0,
        "retries": 0,
    }
    return Target(**(settings | overrides))


def test_lab_inventory_reads_the_fru(free_port: int) -> None:
    lab = _lab_bmc(free_port)
    driver = IpmiDriver(_lab_target(lab))
    facts = driver.inventory().facts
    driver.close()
    inv = lab.machine.inventory
    assert facts == {
        "manufacturer": inv.vendor,
        "product": inv.product,
        "serial": inv.serial,
        "asset_tag": inv.asset_tag,
        "board_manufacturer": inv.vendor,
        "board_product": inv.board,
        "board_serial": inv.board_serial,
        "firmware": "2.47",
        "device_id": {"manufacturer_id": 32473, "product_id": 1, "device_revision": 1},
        "guid": str(lab.machine.uuid),
        "macs": [],  # the lab's FRU lists no MACs
    }


def test_lab_health_and_sensor_readings(free_port: int) -> None:
    lab = _lab_bmc(free_port)
    driver = IpmiDriver(_lab_target(lab))
    driver.set_power(PowerAction.ON)
    health = driver.health()
    driver.close()
    assert health.health == "ok"
    readings = {s.name: s for s in health.sensors}
    assert {"Inlet Temp", "CPU Temp", "Fan1", "PSU1 12V"} <= set(readings)
    inlet = readings["Inlet Temp"]
    assert inlet.value is not None
    assert 15 < inlet.value < 30
    assert inlet.health == "ok"
    assert "C" in inlet.units


def test_lab_unknown_user_is_refused_at_once(free_port: int) -> None:
    lab = _lab_bmc(free_port)
    err, elapsed = _fails(ErrorKind.AUTH, IpmiDriver, _lab_target(lab, username="nobody"))
    assert elapsed < 1.0
    assert "'nobody'" in str(err)
