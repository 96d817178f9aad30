"""The service against a lab rack over real IPMI: inspection, power, and the power sync
with faulty BMCs beside healthy ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.settings import Settings
from tests.lab.conftest import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(
        tmp_path_factory.mktemp("lab"),
        6,
        "--fault",
        "lab-r01-u05=wrong-password",
        "--fault",
        "lab-r01-u06=no-answer",
    )
    yield running
    running.stop()


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path / "data",
        reconciler=False,  # ticks are driven by the test
        bmc_timeout=1.0,
        bmc_retries=1,
        power_sync_failure_limit=2,
    )
    return create_app(settings)


def tick_until_settled(client: TestClient, rounds: int = 10) -> None:
    reconciler = client.app.state.services.reconciler  # type: ignore[attr-defined]
    for _ in range(rounds):
        claimed = client.portal.call(reconciler.tick)  # type: ignore[union-attr]
        client.portal.call(reconciler.drain)  # type: ignore[union-attr]
        if not claimed:
            return


def nodes(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    items = client.get("/api/v1/nodes", headers=headers).json()["items"]
    return {n["name"]: n for n in items}


def test_inspection_power_and_sync_over_ipmi(
    client: TestClient, operator: dict[str, str], lab: Lab
) -> None:
    imported = client.post(
        "/api/v1/racks/import",
        content=lab.manifest.read_bytes(),
        headers={**operator, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 201, imported.text

    started = time.monotonic()
    tick_until_settled(client)
    # Five healthy BMCs and two bad ones, all at once: bounded by the silent one's
    # timeout and retries, not by the sum of them.
    assert time.monotonic() - started < 15
    by_name = nodes(client, operator)
    for name in ("lab-r01-u01", "lab-r01-u02", "lab-r01-u03", "lab-r01-u04"):
        assert by_name[name]["state"] == "ready", by_name[name]
        assert by_name[name]["hardware_profile"] == "lab-virtual-server"
        assert by_name[name]["power_state"] == "off"
    refused = by_name["lab-r01-u05"]
    assert refused["state"] == "failed"
    assert "refused the credentials" in refused["last_error"]
    silent = by_name["lab-r01-u06"]
    assert silent["state"] == "failed"
    assert "No answer" in silent["last_error"] or "timed out" in silent["last_error"]

    inventory = client.get("/api/v1/nodes/lab-r01-u01/inventory", headers=operator).json()
    assert inventory["facts"]["manufacturer"] == "Provisioner Lab"
    assert inventory["facts"]["serial"]

    client.post("/api/v1/nodes/lab-r01-u01/actions/power-on", headers=operator)
    boot = client.put(
        "/api/v1/nodes/lab-r01-u02/boot-device",
        json={"device": "network", "persistent": True, "uefi": True},
        headers=operator,
    )
    assert boot.json() == {"device": "network", "persistent": True, "uefi": True}
    tick_until_settled(client)
    assert lab.status(lab.nodes[0])["power"] == "on"
    assert nodes(client, operator)["lab-r01-u01"]["power_state"] == "on"

    # A BMC goes silent: only its node loses its power state, and the sync of the
    # others is not held up behind it.
    lab.fault(lab.nodes[2], "no-answer")
    power_sync = client.app.state.services.power_sync  # type: ignore[attr-defined]
    started = time.monotonic()
    report = client.portal.call(power_sync.sync_once)  # type: ignore[union-attr]
    assert time.monotonic() - started < 8
    assert report.failed == 3  # u03 now, and u05, u06 from the start
    by_name = nodes(client, operator)
    assert by_name["lab-r01-u03"]["power_state"] == "unknown"
    assert by_name["lab-r01-u03"]["power_reason"]
    assert by_name["lab-r01-u01"]["power_state"] == "on"
    assert by_name["lab-r01-u04"]["power_state"] == "off"

    report = client.portal.call(power_sync.sync_once)  # type: ignore[union-attr]
    assert "lab-r01-u03" in report.flagged
    assert nodes(client, operator)["lab-r01-u03"]["power_state"] == "error"
    lab.fault(lab.nodes[2], "none")


@pytest.fixture(scope="module")
def flaky_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(tmp_path_factory.mktemp("flaky"), 4, "--password", "lab-pw")
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        # Each answer 150 ms late: a login's five exchanges still fit the 1 s timeout.
        ("slow:150", "answers"),
        ("drop:0.3", "answers"),  # lost packets: pyghmi's and the pool's retries cover them
        ("slow:3000", "fails"),  # slower than the timeout: an error, not a hang
        ("no-answer", "fails"),
    ],
)
def test_every_fault_kind_through_the_driver(
    client: TestClient, operator: dict[str, str], flaky_lab: Lab, fault: str, expect: str
) -> None:
    imported = client.post(
        "/api/v1/racks/import",
        content=flaky_lab.manifest.read_bytes(),
        headers={**operator, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 201, imported.text
    victim, *others = flaky_lab.nodes
    flaky_lab.fault(victim, fault)
    try:
        power_sync = client.app.state.services.power_sync  # type: ignore[attr-defined]
        started = time.monotonic()
        report = client.portal.call(power_sync.sync_once)  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
    finally:
        flaky_lab.fault(victim, "none")
    # timeout 1 s and one retry: the worst case is bounded by the pool's deadline.
    assert elapsed < 6
    by_name = nodes(client, operator)
    for other in others:
        assert by_name[other.name]["power_state"] == "off", by_name[other.name]
    if expect == "answers":
        assert report.failed == 0
        assert by_name[victim.name]["power_state"] == "off"
    else:
        assert report.failed == 1
        assert by_name[victim.name]["power_state"] == "unknown"
        reason = by_name[victim.name]["power_reason"]
        # Unreachable or timed out, each says how long it waited and what to check.
        assert f"127.0.0.1:{victim.port}" in reason
        assert "within" in reason, reason
