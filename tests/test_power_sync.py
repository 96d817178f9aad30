"""The power sync when the inventory changes under it: a node deleted while its BMC is
being polled drops only its own result, and the round records every other node."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.power import PowerSync
from provisioner.settings import Settings
from tests.test_reconciler import enroll, kinds, node


@dataclass
class HeldBmc(FakeBmc):
    """A fake BMC whose power reading can be held, to act while it is in flight."""

    asked: threading.Event = field(default_factory=threading.Event)
    """Set when a power reading has reached the BMC."""
    answer: threading.Event = field(default_factory=threading.Event)
    """Cleared: power readings wait here until it is set again."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.answer.set()

    def _enter(self, method: str, aborted: threading.Event | None = None) -> None:
        if method == "power_state":
            self.asked.set()
            self.answer.wait(30)
        super()._enter(method, aborted)


class HeldFleet(FakeFleet):
    def add(self, address: str, **state: Any) -> HeldBmc:
        bmc = HeldBmc(address, **state)
        self.bmcs[(bmc.address, bmc.port)] = bmc
        return bmc


@pytest.fixture
def fleet() -> HeldFleet:
    return HeldFleet()


@pytest.fixture
def app(settings: Settings, fleet: HeldFleet) -> FastAPI:
    return create_app(settings, driver_factory=fleet.driver)


def test_a_node_deleted_while_its_bmc_is_polled_drops_only_its_own_result(
    client: TestClient, operator: dict[str, str], fleet: HeldFleet
) -> None:
    kept = [f"kept{i}" for i in range(1, 4)]
    for i, name in enumerate(kept, start=1):
        enroll(client, operator, fleet, name, i, power="on")
    doomed = enroll(client, operator, fleet, "doomed", 9, power="on")
    assert isinstance(doomed, HeldBmc)
    doomed.answer.clear()
    power_sync: PowerSync = client.app.state.services.power_sync  # type: ignore[attr-defined]
    assert client.portal is not None
    round_ = client.portal.start_task_soon(power_sync.sync_once)
    try:
        assert doomed.asked.wait(10), "the power sync never asked the doomed node's BMC"
        deleted = client.delete("/api/v1/nodes/doomed", headers=operator)
        assert deleted.status_code == 204, deleted.text
    finally:
        doomed.answer.set()
    report = round_.result(timeout=30)

    assert report.polled == 4
    assert report.failed == 0
    for name in kept:
        assert node(client, operator, name)["power_state"] == "on"
        assert kinds(client, operator, name)[-1] == "power-sync"
    assert client.get("/api/v1/nodes/doomed", headers=operator).status_code == 404
