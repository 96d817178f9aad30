"""The Redfish driver against the lab's Redfish BMCs, served from this process over real
HTTPS on 127.0.0.1: each dialect where the driver's behaviour differs (tasks, If-Match,
sessions only), sessions, every error kind, and the certificate policy.

What both protocols share (power and boot round trips through the pool, IPMI and
Redfish inventory of one machine agreeing) is in test_driver_behaviour.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from lab import faults
from lab.redfish.dialects import TRAITS, Dialect
from lab.redfish.server import RedfishServer
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import make_certificate, write_certificate
from provisioner.bmc import BmcError, BootDevice, BootSetting, ErrorKind, PowerAction, Target
from provisioner.bmc.pool import BmcPool
from provisioner.bmc.redfish import RedfishDriver
from provisioner.bmc.registry import service_drivers
from provisioner.profiles import load_profiles, shipped_profiles_dir
from tests.lab_bmcs import USER, LabBmcs, free_port, lab_bmcs

PASSWORD = "rf-Secret-pw9"


@dataclass
class Lab:
    bmcs: LabBmcs
    plain: RedfishServer
    ca_file: Path

    def add(
        self, dialect: Dialect = Dialect.GENERIC, *, plain: bool = False, **kw: Any
    ) -> RedfishBmc:
        """Two NICs, so that the PXE NIC's place is seen; ``plain``: over plain HTTP."""
        server = self.plain if plain else None
        return self.bmcs.add_redfish(dialect, nics=2, server=server, **kw)

    def target(self, bmc: RedfishBmc, **overrides: Any) -> Target:
        settings: dict[str, Any] = {
            "address": "127.0.0.1",
            "port": bmc.port,
            "username": USER,
            "password": PASSWORD,
            "driver": "redfish",
            "timeout": 5.0,
            "ca_bundle": str(self.ca_file),
        }
        return Target(**(settings | overrides))


def _fingerprint_of_pem(pem: bytes) -> str:
    """Independently of the driver: SHA-256 of the certificate's DER form."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    ca_file = tmp_path_factory.mktemp("redfish") / "cert.pem"
    plain = RedfishServer(None)
    plain.start()
    with lab_bmcs(ipmi=False, password=PASSWORD) as bmcs:
        write_certificate(bmcs.certificate, ca_file)
        yield Lab(bmcs, plain, ca_file)
    plain.close()


@pytest.fixture
def drivers() -> Iterator[Callable[[Target], RedfishDriver]]:
    """Makes drivers and closes them after the test."""
    made: list[RedfishDriver] = []

    def make(target: Target, **kw: Any) -> RedfishDriver:
        driver = RedfishDriver(target, **kw)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


# --- power ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_power_round_trip(
    lab: Lab, drivers: Callable[..., RedfishDriver], dialect: Dialect
) -> None:
    bmc = lab.add(dialect)
    driver = drivers(lab.target(bmc))
    assert driver.power_state() == "off"
    for action, expected in [
        (PowerAction.ON, "on"),
        (PowerAction.CYCLE, "on"),
        (PowerAction.RESET, "on"),
        (PowerAction.SOFT_OFF, "off"),
        (PowerAction.RESET, "on"),  # off: a reset powers it on
        (PowerAction.OFF, "off"),
        (PowerAction.OFF, "off"),
    ]:
        driver.set_power(action)
        # Returned once carried out (HPE: after its task), not merely accepted.
        assert bmc.machine.power_on is (expected == "on"), action
        assert driver.power_state() == expected, action


def test_a_task_that_never_completes_times_out_naming_it(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add(Dialect.HPE)
    driver = drivers(lab.target(bmc, power_deadline=2.0))
    bmc.gate.fault = faults.parse_fault("task-hang")
    began = time.monotonic()
    with pytest.raises(BmcError) as info:
        driver.set_power(PowerAction.ON)
    took = time.monotonic() - began
    assert info.value.kind is ErrorKind.TIMEOUT, str(info.value)
    assert "/redfish/v1/TaskService/Tasks/" in str(info.value)
    assert 2.0 <= took < 6.0
    assert not bmc.machine.power_on


def test_abort_from_another_thread_ends_a_hung_call(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add()
    driver = drivers(lab.target(bmc, timeout=30.0))
    bmc.gate.fault = faults.parse_fault("slow:60000")
    errors: list[BmcError] = []

    def call() -> None:
        try:
            driver.power_state()
        except BmcError as err:
            errors.append(err)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    began = time.monotonic()
    driver.abort()
    assert time.monotonic() - began < 0.5  # abort never blocks
    worker.join(5)
    assert not worker.is_alive()
    assert [e.kind for e in errors] == [ErrorKind.TIMEOUT]


# --- boot device --------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.GENERIC, Dialect.DELL])
def test_boot_override_round_trip(
    lab: Lab, drivers: Callable[..., RedfishDriver], dialect: Dialect
) -> None:
    bmc = lab.add(dialect)  # Dell: the PATCH needs If-Match
    driver = drivers(lab.target(bmc))
    for setting in [
        BootSetting(BootDevice.NETWORK),
        BootSetting(BootDevice.DISK, persistent=True, uefi=True),
        BootSetting(BootDevice.NETWORK, persistent=True),
    ]:
        driver.set_boot_device(setting)
        assert driver.boot_device() == setting
        assert bmc.machine.boot.valid
    driver.set_boot_device(BootSetting(BootDevice.DEFAULT))
    assert driver.boot_device() == BootSetting(BootDevice.DEFAULT, persistent=True)
    assert not bmc.machine.boot.valid


def test_unsettable_boot_device_is_unsupported(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    driver = drivers(lab.target(lab.add()))
    with pytest.raises(BmcError) as info:
        driver.set_boot_device(BootSetting(BootDevice.OTHER))
    assert info.value.kind is ErrorKind.UNSUPPORTED


# --- sessions -----------------------------------------------------------------------


def test_supermicro_like_bmc_refuses_basic_auth_and_the_session_works(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add(Dialect.SUPERMICRO)
    driver = drivers(lab.target(bmc))
    driver.set_power(PowerAction.ON)
    assert driver.power_state() == "on"
    assert len(bmc.sessions.ids()) == 1


def test_one_session_serves_every_call_and_close_logs_out(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add()
    driver = drivers(lab.target(bmc))
    for _ in range(20):
        driver.power_state()
    driver.boot_device()
    driver.inventory()
    assert len(bmc.sessions.ids()) == 1
    driver.close()
    assert len(bmc.sessions.ids()) == 0
    driver.close()  # twice: still never raises


def test_an_expired_session_is_logged_in_again(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add(session_timeout=0.5)
    driver = drivers(lab.target(bmc))
    assert driver.power_state() == "off"
    first = bmc.sessions.ids()
    time.sleep(1.0)
    assert len(bmc.sessions.ids()) == 0  # expired
    assert driver.power_state() == "off"
    assert len(bmc.sessions.ids()) == 1
    assert bmc.sessions.ids() != first


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.GENERIC, Dialect.SUPERMICRO])
def test_wrong_password_is_authentication_failed_at_once(
    lab: Lab, dialect: Dialect, caplog: pytest.LogCaptureFixture
) -> None:
    bmc = lab.add(dialect)
    caplog.set_level(logging.DEBUG)
    began = time.monotonic()
    with pytest.raises(BmcError) as info:
        RedfishDriver(lab.target(bmc, password="not-" + PASSWORD))
    assert time.monotonic() - began < 2
    assert info.value.kind is ErrorKind.AUTH
    assert "check the username and password" in str(info.value)
    assert USER in str(info.value)
    assert PASSWORD not in str(info.value)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_nothing_listening_is_unreachable(lab: Lab) -> None:
    port = free_port()
    began = time.monotonic()
    with pytest.raises(BmcError) as info:
        RedfishDriver(Target("127.0.0.1", USER, PASSWORD, port=port, timeout=2.0))
    assert time.monotonic() - began < 3
    assert info.value.kind is ErrorKind.UNREACHABLE
    assert f"127.0.0.1:{port}" in str(info.value)


def test_busy_for_less_than_the_call_allows_is_waited_out(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add()
    driver = drivers(lab.target(bmc, timeout=10.0))
    bmc.gate.fault = faults.parse_fault("busy")  # Retry-After: 2
    threading.Timer(0.5, lambda: setattr(bmc.gate, "fault", faults.NO_FAULT)).start()
    began = time.monotonic()
    driver.set_power(PowerAction.ON)
    assert time.monotonic() - began >= 1.5, "it did not wait as Retry-After asked"
    assert bmc.machine.power_on


def test_busy_for_longer_than_the_call_allows_is_busy(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add()
    driver = drivers(lab.target(bmc, timeout=1.0))
    bmc.gate.fault = faults.parse_fault("busy")
    began = time.monotonic()
    with pytest.raises(BmcError) as info:
        driver.power_state()
    assert time.monotonic() - began < 1.0  # no point waiting for what cannot come
    assert info.value.kind is ErrorKind.BUSY
    assert "retry after 2 s" in str(info.value)


# --- certificates -------------------------------------------------------------------


def test_first_contact_pins_the_certificate(lab: Lab) -> None:
    bmc = lab.add()
    pins: list[tuple[Target, str]] = []
    drivers = service_drivers(on_pin=lambda t, fp: pins.append((t, fp)))
    target = lab.target(bmc, ca_bundle=None)
    driver = drivers(target)
    try:
        driver.power_state()
        driver.power_state()
    finally:
        driver.close()
    expected = _fingerprint_of_pem(lab.ca_file.read_bytes())
    assert pins == [(target, expected)]
    assert isinstance(driver, RedfishDriver)
    assert driver.certificate_fingerprint() == expected


def test_the_pool_keeps_the_session_that_pinned_once_the_pin_is_recorded(lab: Lab) -> None:
    """The node's target carries the pin from the next read on; the session that
    presented that certificate goes on serving it rather than logging in again."""
    bmc = lab.add()
    pins: list[str] = []
    pool = BmcPool(
        max_workers=2, driver_factory=service_drivers(on_pin=lambda _, fp: pins.append(fp))
    )
    first = lab.target(bmc, ca_bundle=None)

    sessions: list[list[str]] = []

    async def reads() -> None:
        assert await pool.call(first, lambda d: d.power_state()) == "off"
        pinned = replace(first, tls_fingerprint=pins[0])
        for _ in range(3):
            assert await pool.call(pinned, lambda d: d.power_state()) == "off"
        sessions.append(bmc.sessions.ids())
        # Any other change of settings is a new session, as before.
        slower = replace(pinned, timeout=6.0)
        assert await pool.call(slower, lambda d: d.power_state()) == "off"
        sessions.append(bmc.sessions.ids())

    try:
        asyncio.run(reads())
    finally:
        pool.close()
    # Session ids count the BMC's logins: the first one served every pinned read.
    assert sessions == [["1"], ["2"]]


def test_a_pinned_bmc_with_a_new_certificate_is_refused_naming_both(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add()
    pinned = _fingerprint_of_pem(lab.ca_file.read_bytes())
    target = lab.target(bmc, ca_bundle=None, tls_fingerprint=pinned.upper())
    assert drivers(target).power_state() == "off"  # the pinned one is the lab's
    bmc.gate.fault = faults.parse_fault("new-certificate")
    shown = _fingerprint_of_pem(
        __import__("ssl").get_server_certificate(("127.0.0.1", bmc.port)).encode()
    )
    with pytest.raises(BmcError) as info:
        drivers(target)
    assert info.value.kind is ErrorKind.CERTIFICATE
    assert f"presented certificate {shown}, not the pinned {pinned}" in str(info.value)
    assert "accept-certificate" in str(info.value)


def test_a_wrong_ca_bundle_is_refused(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    write_certificate(make_certificate("127.0.0.1", "some other CA"), other)
    with pytest.raises(BmcError) as info:
        RedfishDriver(lab.target(lab.add(), ca_bundle=str(other)))
    assert info.value.kind is ErrorKind.CERTIFICATE
    assert "does not verify" in str(info.value)


def test_verify_false_is_accepted_and_warned_once(
    lab: Lab, drivers: Callable[..., RedfishDriver], caplog: pytest.LogCaptureFixture
) -> None:
    bmc = lab.add()
    target = lab.target(bmc, ca_bundle=None, tls_verify=False)
    pins: list[str] = []
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        assert drivers(target, on_pin=lambda t, fp: pins.append(fp)).power_state() == "off"
    warned = [r for r in caplog.records if "certificate not verified" in r.getMessage()]
    assert [r.getMessage() for r in warned] == [
        f"certificate not verified for BMC 127.0.0.1:{bmc.port} (verify: false set for it)"
    ]
    assert pins == []  # nothing is pinned when nothing is checked


def test_plain_http_when_the_address_says_so(
    lab: Lab, drivers: Callable[..., RedfishDriver]
) -> None:
    bmc = lab.add(plain=True)
    driver = drivers(lab.target(bmc, address="http://127.0.0.1"))
    assert driver.power_state() == "off"
    assert driver.certificate_fingerprint() is None


# --- inventory and health -----------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_inventory_has_the_ipmi_keys_and_more(
    lab: Lab, drivers: Callable[..., RedfishDriver], dialect: Dialect
) -> None:
    bmc = lab.add(dialect)
    facts = drivers(lab.target(bmc)).inventory().facts
    fru = bmc.machine.inventory  # what the IPMI BMC's FRU reads from
    assert facts["manufacturer"] == fru.vendor
    assert facts["product"] == fru.product
    assert facts["serial"] == fru.serial
    assert facts["guid"] == str(bmc.machine.uuid).lower()
    assert facts["macs"] == bmc.machine.macs  # the PXE NIC first
    assert facts["firmware"] == "2.47"
    assert facts["health"] == "ok"
    assert {d["media_type"] for d in facts["drives"]} == {"SSD", "HDD"}
    assert all(d["size_bytes"] > 4 * 10**9 and d["serial"] for d in facts["drives"])
    assert facts["firmware_inventory"] == {"BIOS": facts["bios_version"], "BMC": "2.47"}
    assert facts["processors"]["count"] >= 1
    assert facts["memory"]["dimms"]
    profile = load_profiles(shipped_profiles_dir()).match(facts)
    assert profile is not None
    assert profile.name == "lab-virtual-server"


@pytest.mark.parametrize(
    ("dialect", "expand"),
    [(Dialect.GENERIC, False), (Dialect.HPE, True), (Dialect.HPE, False)],
    ids=["legacy-thermal-power", "sensors-expanded", "sensors-one-by-one"],
)
def test_health_reads_the_system_status_and_sensors(
    lab: Lab,
    drivers: Callable[..., RedfishDriver],
    monkeypatch: pytest.MonkeyPatch,
    dialect: Dialect,
    expand: bool,
) -> None:
    # The HPE-like dialect serves a Sensors collection; without $expand advertised the
    # driver reads each member.
    monkeypatch.setitem(TRAITS, dialect, replace(TRAITS[dialect], expand_query=expand))
    bmc = lab.add(dialect)
    bmc.machine.power_on = True
    health = drivers(lab.target(bmc)).health()
    assert health.health == "ok"
    assert [s.name for s in health.sensors] == [s.name for s in bmc.machine.sensors]
    assert [s.value for s in health.sensors] == pytest.approx(
        [s.reading_on for s in bmc.machine.sensors]
    )


def test_the_password_is_in_no_error_or_log(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = lab.add(Dialect.SUPERMICRO)
    pinned = "sha256:" + "0" * 64
    cases: list[tuple[str, dict[str, Any]]] = [
        ("wrong-password", {}),
        ("busy", {}),
        ("no-answer", {}),
        ("none", {"ca_bundle": None, "tls_fingerprint": pinned}),
    ]
    messages: list[str] = []
    for fault, settings in cases:
        bmc.gate.fault = faults.parse_fault(fault)
        with pytest.raises(BmcError) as info:
            RedfishDriver(lab.target(bmc, timeout=1.0, **settings))
        messages.append(str(info.value))
    bmc.gate.fault = faults.NO_FAULT
    assert all(PASSWORD not in m for m in messages), messages
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
