"""Discovery of unknown MACs is bounded: a rate per process, a total per database with
the oldest discovered nodes pruned, and counters for both (issue 11, defect 6)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlmodel import Session

from provisioner.app import create_app
from provisioner.boot.discovery import PRUNER, TokenBucket
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests.boot.test_boot_api import flush_hops, lint_ipxe
from tests.conftest import auth, node_body


def bounded(settings: Settings, **bounds: Any) -> FastAPI:
    return create_app(settings.model_copy(update=bounds))


def admin_of(app: FastAPI) -> dict[str, str]:
    with Session(app.state.services.engine) as session:
        return auth(create_token(session, name="discovery-admin", scope="admin")[1])


def discovered(client: TestClient, headers: dict[str, str]) -> list[str]:
    listed = client.get("/api/v1/nodes", params={"state": "discovered"}, headers=headers)
    assert listed.status_code == 200, listed.text
    return sorted(n["name"] for n in listed.json()["items"])


def counter(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def mac(i: int) -> str:
    return f"52:54:00:10:00:{i:02x}"


@pytest.fixture
def flood(settings: Settings) -> Iterator[TestClient]:
    """A service that records 5 unknown machines at once and then almost none, and
    keeps 3 discovered nodes."""
    app = bounded(settings, discovery_rate=0.001, discovery_burst=5, discovery_max=3)
    with TestClient(app) as client:
        yield client


def test_a_flood_of_unknown_macs_is_bounded(
    flood: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = flood
    app: Any = client.app
    headers = admin_of(app)
    enrolled = client.post("/api/v1/nodes", json=node_body(), headers=headers)
    assert enrolled.status_code == 201, enrolled.text
    answers = [client.get("/boot/ipxe", params={"mac": mac(i)}) for i in range(20)]
    assert {a.status_code for a in answers} == {200}
    for answer in answers:
        lint_ipxe(answer.text)
    assert all("booting from local disk" in a.text for a in answers[:5])
    later = answers[5:]
    assert all("asking again in 10 s" in a.text for a in later)
    assert all("chain --autofree http://testserver/boot/bootstrap.ipxe" in a.text for a in later)
    # A machine already recorded asks again: that costs no share of the rate.
    assert "booting from local disk" in client.get("/boot/ipxe", params={"mac": mac(4)}).text
    flush_hops(client, app)

    # The total holds: the newest three are kept, the oldest two pruned through the
    # node service's deletion, which logs them; the enrolled node is not discovered.
    assert discovered(client, headers) == [f"discovered-5254001000{i:02x}" for i in (2, 3, 4)]
    assert client.get("/api/v1/nodes/r01-u01", headers=headers).status_code == 200
    assert counter(client, "provisioner_discovery_dropped_total") == 15
    assert counter(client, "provisioner_discovery_pruned_total") == 2
    deleted = [r.getMessage() for r in caplog.records if PRUNER in r.getMessage()]
    assert len(deleted) == 2, deleted
    # Dropped requests are kept with the boot requests no node was found for, and the
    # pruned nodes' pending boot hops did not take the others' with them.
    hops = client.get("/api/v1/boot/hops", params={"limit": 100}, headers=headers).json()
    assert {h["mac"] for h in hops if "PROVISIONER_DISCOVERY_RATE" in h["detail"]} == {
        mac(i) for i in range(5, 20)
    }
    assert not [r for r in caplog.records if r.exc_info]
    events = client.get("/api/v1/nodes/discovered-525400100004/events", headers=headers).json()
    assert [e["kind"] for e in events] == ["discovered", "boot-ipxe", "boot-ipxe"]


def test_the_total_holds_across_replicas(settings: Settings) -> None:
    """Each replica has its own rate, but the total is counted in the database."""
    apps = [bounded(settings, discovery_max=4) for _ in range(2)]
    with ExitStack() as stack:
        clients = [stack.enter_context(TestClient(app)) for app in apps]
        for i in range(10):
            client = clients[i % 2]
            assert client.get("/boot/ipxe", params={"mac": mac(i)}).status_code == 200
        names = discovered(clients[0], admin_of(apps[0]))
        pruned = sum(counter(c, "provisioner_discovery_pruned_total") for c in clients)
    assert names == [f"discovered-5254001000{i:02x}" for i in (6, 7, 8, 9)]
    assert pruned == 6


def test_a_rate_of_zero_records_no_one(settings: Settings) -> None:
    with TestClient(bounded(settings, discovery_rate=0)) as client:
        answer = client.get("/boot/ipxe", params={"mac": mac(1)})
        assert "asking again" in answer.text
        assert discovered(client, admin_of(client.app)) == []  # type: ignore[arg-type]
        assert counter(client, "provisioner_discovery_dropped_total") == 1


def test_the_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60
    assert sum(bucket.take() for _ in range(10)) == 3


@pytest.mark.parametrize(
    "bounds",
    [{"discovery_rate": -1}, {"discovery_burst": 0}, {"discovery_max": 0}],
)
def test_bounds_are_checked(bounds: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bounds)  # type: ignore[arg-type]


def test_a_node_already_named_for_the_mac_does_not_stop_its_discovery(
    client: TestClient, admin: dict[str, str]
) -> None:
    """An operator may name (or rename) a node ``discovered-<mac>``: the machine with
    that MAC is still discovered, under the first free name after its own, and asking
    again finds the same node (it once failed with a 500 on every request)."""
    named = node_body("discovered-5254001000aa", "52:54:00:10:01:01")
    assert client.post("/api/v1/nodes", json=named, headers=admin).status_code == 201
    renamed = node_body("spare", "52:54:00:10:01:02")
    assert client.post("/api/v1/nodes", json=renamed, headers=admin).status_code == 201
    patch = {"name": "discovered-5254001000aa-2"}
    assert client.patch("/api/v1/nodes/spare", json=patch, headers=admin).status_code == 200

    answers = [client.get("/boot/ipxe", params={"mac": "52:54:00:10:00:aa"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert all("booting from local disk" in a.text for a in answers)
    assert discovered(client, admin) == ["discovered-5254001000aa-3"]
    found = client.get("/api/v1/nodes", params={"mac": "52:54:00:10:00:aa"}, headers=admin)
    assert [n["name"] for n in found.json()["items"]] == ["discovered-5254001000aa-3"]
    # The operator's nodes are as they were.
    for name in ("discovered-5254001000aa", "discovered-5254001000aa-2"):
        assert client.get(f"/api/v1/nodes/{name}", headers=admin).json()["state"] == "enrolled"
