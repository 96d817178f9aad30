"""The Redfish driver's boot override when the System changes between its GET and its
PATCH (the lab's ``etag-race`` fault: another client writes the System, so the ETag the
driver sent in ``If-Match`` is stale and the BMC answers 412). Once, the driver reads
the System again and its second PATCH goes through; every time, it gives up after that
one retry with an error naming the 412, and the machine's boot override is untouched.
Through the real driver, over HTTPS on 127.0.0.1, for the Dell-like dialect (If-Match
required) and the generic one (If-Match sent because the System has an ETag).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lab import faults
from lab.machine import BootDevice as LabBootDevice
from lab.machine import BootFlags
from lab.redfish.dialects import Dialect
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import write_certificate
from provisioner.bmc import BmcError, BootDevice, BootSetting, ErrorKind, Target
from provisioner.bmc.redfish import RedfishDriver
from tests.lab_bmcs import PASSWORD, USER, LabBmcs, lab_bmcs

DIALECTS = [Dialect.GENERIC, Dialect.DELL]


@dataclass
class Lab:
    bmcs: LabBmcs
    ca_file: Path

    def target(self, bmc: RedfishBmc) -> Target:
        return Target(
            address="127.0.0.1",
            port=bmc.port,
            username=USER,
            password=PASSWORD,
            driver="redfish",
            timeout=5.0,
            ca_bundle=str(self.ca_file),
        )

    def system(self, bmc: RedfishBmc) -> dict[str, object]:
        """The System as a client other than the driver reads it."""
        answer = httpx.get(
            f"https://127.0.0.1:{bmc.port}/redfish/v1/Systems/{bmc.traits.system_id}",
            auth=(USER, PASSWORD),
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=10,
        )
        answer.raise_for_status()
        system: dict[str, object] = answer.json()
        return system


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    ca_file = tmp_path_factory.mktemp("redfish-etag") / "cert.pem"
    with lab_bmcs(ipmi=False) as bmcs:
        write_certificate(bmcs.certificate, ca_file)
        yield Lab(bmcs, ca_file)


@pytest.fixture
def driver_of(lab: Lab) -> Iterator[Callable[[RedfishBmc], RedfishDriver]]:
    """Makes logged-in drivers and logs them out after the test."""
    made: list[RedfishDriver] = []

    def make(bmc: RedfishBmc) -> RedfishDriver:
        driver = RedfishDriver(lab.target(bmc))
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_change_before_the_patch_is_read_again_and_the_retry_sets_the_override(
    lab: Lab, driver_of: Callable[[RedfishBmc], RedfishDriver], dialect: Dialect
) -> None:
    bmc = lab.bmcs.add_redfish(dialect)
    driver = driver_of(bmc)
    bmc.gate.fault = faults.parse_fault("etag-race:1")
    setting = BootSetting(BootDevice.NETWORK, persistent=True, uefi=True)
    driver.set_boot_device(setting)
    assert bmc.machine.boot == BootFlags(True, True, True, LabBootDevice.PXE)
    assert driver.boot_device() == setting
    # The other client's write happened, once: the first PATCH was refused for it.
    assert lab.system(bmc)["HostName"] == f"{bmc.machine.name}-other-client-1"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_change_before_every_patch_ends_after_one_retry_leaving_the_override(
    lab: Lab, driver_of: Callable[[RedfishBmc], RedfishDriver], dialect: Dialect
) -> None:
    bmc = lab.bmcs.add_redfish(dialect)
    driver = driver_of(bmc)
    before = BootSetting(BootDevice.DISK, persistent=True)
    driver.set_boot_device(before)
    flags = bmc.machine.boot
    assert flags == BootFlags(True, True, False, LabBootDevice.DISK)
    bmc.gate.fault = faults.parse_fault("etag-race")
    began = time.monotonic()
    with pytest.raises(BmcError) as info:
        driver.set_boot_device(BootSetting(BootDevice.NETWORK))
    # Two round trips of GET and PATCH, far within the call's 5 s; generous for CI.
    assert time.monotonic() - began < 15
    error = info.value
    system = f"/redfish/v1/Systems/{bmc.traits.system_id}"
    assert error.kind is ErrorKind.PROTOCOL, str(error)
    # Where, what was refused, and the BMC's own words for why.
    assert str(error).startswith(
        f"The BMC at 127.0.0.1:{bmc.port} answered PATCH {system} with HTTP 412: "
        "The ETag supplied did not match the ETag required to change the resource"
    )
    assert "another client is writing it; the boot override was not set" in str(error)
    assert PASSWORD not in str(error)
    # Exactly two PATCHes reached the BMC (each raced): one retry, not a loop.
    assert lab.system(bmc)["HostName"] == f"{bmc.machine.name}-other-client-2"
    assert bmc.machine.boot == flags
    assert driver.boot_device() == before
    # Once the other client stops, the same driver sets the override.
    bmc.gate.fault = faults.NO_FAULT
    driver.set_boot_device(BootSetting(BootDevice.NETWORK))
    assert bmc.machine.boot == BootFlags(True, False, False, LabBootDevice.PXE)
