"""Drivers by name: the registry picks each target's driver, in the pool and in the
service, and says so when a node names a driver it does not have."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from provisioner.bmc import (
    DRIVER_NAMES,
    BmcError,
    BmcPool,
    Driver,
    DriverRegistry,
    ErrorKind,
    PowerAction,
    Target,
    service_drivers,
)
from provisioner.bmc.credentials import target_for
from provisioner.bmc.fake import FakeFleet
from provisioner.models import Bmc
from provisioner.secrets import Vault
from provisioner.settings import Settings
from tests.conftest import node_body


@pytest.fixture
def pool() -> Iterator[BmcPool]:
    p = BmcPool(max_workers=4)  # the service's registry
    yield p
    p.close()


def power_state(driver: Driver) -> str:
    return driver.power_state()


def test_the_service_offers_ipmi_redfish_and_fake() -> None:
    assert DRIVER_NAMES == ("fake", "ipmi", "redfish")
    assert service_drivers().names == DRIVER_NAMES


def test_each_target_gets_the_driver_it_names(
    pool: BmcPool, bmc: Any, target_for: Callable[..., Target]
) -> None:
    ipmi = target_for(bmc)
    fake = Target("192.0.2.7", "admin", "pw", driver="fake")

    async def scenario() -> None:
        await pool.call(fake, lambda d: d.set_power(PowerAction.ON))
        assert await pool.call(fake, power_state) == "on"
        assert await pool.call(ipmi, power_state) == "off"  # the real BMC was not touched

    asyncio.run(scenario())
    assert bmc.logins == 1


def test_an_adopted_fake_keeps_the_first_credentials(pool: BmcPool) -> None:
    async def scenario() -> None:
        await pool.call(Target("192.0.2.8", "admin", "first", driver="fake"), power_state)
        with pytest.raises(BmcError) as info:
            await pool.call(Target("192.0.2.8", "admin", "second", driver="fake"), power_state)
        assert info.value.kind is ErrorKind.AUTH

    asyncio.run(scenario())


def test_an_unknown_driver_is_unsupported_and_names_the_known_ones(pool: BmcPool) -> None:
    target = Target("192.0.2.9", "admin", "pw", driver="snmp")
    with pytest.raises(BmcError) as info:
        asyncio.run(pool.call(target, power_state))
    assert info.value.kind is ErrorKind.UNSUPPORTED
    assert "'snmp'" in str(info.value)
    assert "use one of fake, ipmi, redfish" in str(info.value)


def test_a_registry_of_its_own() -> None:
    fleet = FakeFleet()
    fleet.add("192.0.2.10", power="on")
    drivers = DriverRegistry({"lab": fleet.driver})
    assert drivers.names == ("lab",)
    assert drivers(Target("192.0.2.10", "admin", "admin", driver="lab")).power_state() == "on"
    with pytest.raises(BmcError, match="use one of lab"):
        drivers(Target("192.0.2.10", "admin", "admin"))


def test_a_bmc_row_names_its_driver_in_the_target() -> None:
    vault = Vault(Fernet.generate_key())
    row = Bmc(
        node_id=uuid.uuid4(),
        driver="fake",
        address="192.0.2.11",
        username="admin",
        password_encrypted=vault.encrypt("pw"),
    )
    target = target_for(row, vault, Settings())
    assert (target.driver, target.password) == ("fake", "pw")


def test_enrollment_accepts_the_registry_names_and_the_fake_answers(
    client: TestClient, operator: dict[str, str]
) -> None:
    bmc = {"address": "192.0.2.12", "username": "admin", "password": "pw"}
    body = node_body(bmc={**bmc, "driver": "fake"})
    response = client.post("/api/v1/nodes", json=body, headers=operator)
    assert response.status_code == 201, response.text
    assert response.json()["bmc"]["driver"] == "fake"
    power = client.get("/api/v1/nodes/r01-u01/power", headers=operator)
    assert power.json() == {"power_state": "off"}

    body = node_body("r01-u02", "52:54:00:00:01:02", bmc={**bmc, "driver": "snmp"})
    refused = client.post("/api/v1/nodes", json=body, headers=operator)
    assert refused.status_code == 422
    assert "use one of fake, ipmi, redfish" in refused.text
