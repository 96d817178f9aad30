"""``bmc_driver: auto``: the probe finds Redfish on a lab Redfish BMC and IPMI on a lab
IPMI BMC, through the service's drivers and pool, and names both attempts when neither
answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from provisioner.bmc import BmcPool, Target, probe
from provisioner.bmc.credentials import deadline_for
from provisioner.bmc.registry import service_drivers
from tests.lab_bmcs import PASSWORD, USER, LabBmcs, free_port, lab_bmcs


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBmcs]:
    with lab_bmcs() as bmcs:
        yield bmcs


def _target(port: int = 623, password: str = PASSWORD) -> Target:
    return Target(
        address="127.0.0.1", username=USER, password=password, port=port, timeout=1.5, retries=0
    )


Results = list[probe.Found | probe.NothingAnswered]


async def _find(targets: list[tuple[Target, int | None]]) -> Results:
    pool = BmcPool(driver_factory=service_drivers())

    async def ipmi_login(target: Target) -> None:
        await pool.call(target, lambda _driver: None, deadline=deadline_for(target))

    try:
        async with probe.probe_client() as client:
            return await probe.find_drivers(
                targets, redfish_root=probe.redfish_root_over(client), ipmi_login=ipmi_login
            )
    finally:
        pool.close()


def test_redfish_ipmi_and_nothing_are_told_apart_in_one_batch(lab: LabBmcs) -> None:
    redfish = lab.add_redfish()
    ipmi = lab.add_ipmi()
    silent = free_port(socket.SOCK_DGRAM)
    found = asyncio.run(
        _find([(_target(), redfish.port), (_target(), ipmi.port), (_target(), silent)])
    )
    assert found[0] == probe.Found("redfish", redfish.port)
    assert found[1] == probe.Found("ipmi", ipmi.port)
    nothing = found[2]
    assert isinstance(nothing, probe.NothingAnswered)
    message = str(nothing)
    assert f"Redfish at https://127.0.0.1:{silent}/redfish/v1" in message
    assert f"IPMI at 127.0.0.1 port {silent}" in message
    assert "name the driver" in message
    assert PASSWORD not in message


def test_an_ipmi_bmc_refusing_the_password_is_not_found(lab: LabBmcs) -> None:
    ipmi = lab.add_ipmi()
    (result,) = asyncio.run(_find([(_target(password="wrong-pw"), ipmi.port)]))
    assert isinstance(result, probe.NothingAnswered)
    assert "wrong-pw" not in str(result)


def test_a_service_root_is_json_with_redfish_version() -> None:
    assert probe.service_root_verdict(200, b'{"RedfishVersion": "1.15.0"}') is None
    assert probe.service_root_verdict(200, b"<html>") == "an answer that is not JSON"
    assert probe.service_root_verdict(200, b'{"Name": "x"}') == "JSON without RedfishVersion"
    assert probe.service_root_verdict(404, b"") == "HTTP 404 instead of the service root"


def test_a_batch_is_probed_several_at_once_up_to_the_limit() -> None:
    """Many rows of a manifest: not one after another, and no more at once than asked."""
    in_flight, most = 0, 0

    async def answers_after_others_started(address: str, port: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1

    async def never(_target: Target) -> None:
        raise AssertionError("Redfish answered: IPMI is not asked")

    targets: list[tuple[Target, int | None]] = [(_target(), 1000 + i) for i in range(20)]
    found = asyncio.run(
        probe.find_drivers(
            targets, redfish_root=answers_after_others_started, ipmi_login=never, limit=8
        )
    )
    assert found == [probe.Found("redfish", 1000 + i) for i in range(20)]
    assert most == 8
