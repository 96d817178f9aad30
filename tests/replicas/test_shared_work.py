"""Work every replica runs a loop for, done by one replica at a time: the power sync
(an advisory lock and a schedule kept in the database), and the reconciler's steps
(leases renewed while a step outlasts them, so no other replica takes the node).

Each "replica" here is a second set of the service's parts on the same database, in
the test's process: enough for locks and leases, which are per connection and per owner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from provisioner import db
from provisioner.app import create_app
from provisioner.db import make_engine
from provisioner.models import Deployment, Node, table_of, utcnow
from provisioner.power import PowerSync
from provisioner.reconciler import Reconciler
from provisioner.services import Services
from provisioner.settings import Settings
from tests import test_deploying as deploying
from tests.test_power_sync import HeldBmc, HeldFleet
from tests.test_reconciler import enroll, node, tick

INTERVAL = 60.0


@pytest.fixture
def fleet() -> HeldFleet:
    return HeldFleet()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_sync_interval=INTERVAL,
        lease_seconds=1.5,
        inspect_on_enroll=False,
    )


@pytest.fixture
def app(settings: Settings, fleet: HeldFleet) -> FastAPI:
    return create_app(settings, driver_factory=fleet.driver)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


def polled_long_ago(parts: Services) -> None:
    with Session(parts.engine) as session:
        session.execute(
            update(Node).values(power_checked_at=utcnow() - timedelta(seconds=INTERVAL))
        )
        session.commit()


def test_one_replica_at_a_time_runs_the_power_sync(
    client: TestClient, operator: dict[str, str], fleet: HeldFleet, settings: Settings
) -> None:
    parts = services(client)
    portal = client.portal
    assert portal is not None
    enroll(client, operator, fleet, "n1", 1, power="on")
    held = enroll(client, operator, fleet, "n2", 2, power="on")
    assert isinstance(held, HeldBmc)
    mine = parts.power_sync
    other = PowerSync(parts.engine, parts.vault, parts.bmc_pool, settings)
    if parts.engine.dialect.name != "postgresql":
        # One process on SQLite: its loop's interval is the whole schedule.
        assert portal.call(mine.sync_if_due) is not None
        assert portal.call(mine.sync_if_due) is not None
        return

    polled_long_ago(parts)  # (enrolling read their power)
    held.asked.clear()
    held.answer.clear()
    round_ = portal.start_task_soon(mine.sync_if_due)
    try:
        assert held.asked.wait(10), "the first round never polled n2"
        # The other replica's loop comes round while this one's round is in flight.
        assert portal.call(other.sync_if_due) is None
    finally:
        held.answer.set()
    report = round_.result(timeout=30)
    assert report is not None
    assert report.polled == 2

    # Every node was polled less than an interval ago: no replica polls again yet.
    assert portal.call(other.sync_if_due) is None
    assert portal.call(mine.sync_if_due) is None
    polled_long_ago(parts)
    again = portal.call(other.sync_if_due)
    assert again is not None
    assert again.polled == 2
    assert (mine.rounds, other.rounds) == (1, 1)
    metrics = client.get("/metrics").text
    assert "provisioner_power_sync_rounds_total 1.0" in metrics


def test_a_step_outlasting_its_lease_keeps_its_node(
    client: TestClient, operator: dict[str, str], fleet: HeldFleet, settings: Settings
) -> None:
    """A power action held at its BMC for twice the lease time: its replica renews the
    lease, another replica does not claim the node, and the action is done once."""
    parts = services(client)
    portal = client.portal
    assert portal is not None
    held = enroll(client, operator, fleet, "n1", 1, power="off")
    assert isinstance(held, HeldBmc)
    mine = parts.reconciler
    other = Reconciler(parts.engine, parts.vault, parts.bmc_pool, settings, lambda: parts.profiles)
    response = client.post("/api/v1/nodes/n1/actions/power-on", headers=operator)
    assert response.status_code == 202, response.text

    held.asked.clear()
    held.answer.clear()
    loop = portal.start_task_soon(mine.run)
    try:
        assert held.asked.wait(10), "the power-on never reached the BMC"
        deadline = time.monotonic() + 2 * settings.lease_seconds
        while time.monotonic() < deadline:
            assert portal.call(other.tick) == 0, "another replica claimed a leased node"
            time.sleep(0.2)
        with Session(parts.engine) as session:
            owner = session.exec(select(Node.lease_owner)).one()
        assert owner == mine.owner
        held.answer.set()
        for _ in range(100):
            if node(client, operator, "n1")["power_state"] == "on":
                break
            time.sleep(0.1)
    finally:
        held.answer.set()
        loop.cancel()
    assert node(client, operator, "n1")["power_state"] == "on"
    assert held.calls.count("set_power") == 1, held.calls
    assert (mine.claims, mine.takeovers, other.claims) == (1, 0, 0)
    with Session(parts.engine) as session:
        assert session.exec(select(col(Node.lease_owner))).one() is None


def test_a_lease_left_to_expire_is_taken_over_and_counted(
    client: TestClient, operator: dict[str, str], fleet: HeldFleet
) -> None:
    parts = services(client)
    portal = client.portal
    assert portal is not None
    enroll(client, operator, fleet, "n1", 1, power="off")
    client.post("/api/v1/nodes/n1/actions/power-on", headers=operator)
    with Session(parts.engine) as session:
        session.execute(
            update(Node).values(
                lease_owner="dead-host:1:00000000",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
        session.commit()
    reconciler = parts.reconciler
    assert portal.call(reconciler.tick) == 1
    portal.call(reconciler.drain)
    assert (reconciler.claims, reconciler.takeovers) == (1, 1)
    metrics = client.get("/metrics").text
    assert "provisioner_reconciler_takeovers_total 1.0" in metrics
    assert f'provisioner_replica{{owner="{reconciler.owner}"}} 1.0' in metrics
    assert node(client, operator, "n1")["power_state"] == "on"


def test_a_stopping_replica_hands_back_the_step_it_cut_short(
    client: TestClient, operator: dict[str, str], fleet: HeldFleet, settings: Settings
) -> None:
    """What SIGTERM does: the replica claims nothing more, cuts short a step held at
    its BMC after the grace and releases its lease, waking the node (the power step sets
    the wake time to the lease's end); another replica takes it at once, no takeover."""
    parts = services(client)
    portal = client.portal
    assert portal is not None
    held = enroll(client, operator, fleet, "n1", 1, power="off")
    assert isinstance(held, HeldBmc)
    mine = parts.reconciler
    other = Reconciler(parts.engine, parts.vault, parts.bmc_pool, settings, lambda: parts.profiles)
    response = client.post("/api/v1/nodes/n1/actions/power-on", headers=operator)
    assert response.status_code == 202, response.text

    held.asked.clear()
    held.answer.clear()
    loop = portal.start_task_soon(mine.run)
    try:
        assert held.asked.wait(10), "the power-on never reached the BMC"
        with Session(parts.engine) as session:
            session.execute(update(Node).values(wake_at=utcnow() + timedelta(seconds=60)))
            session.commit()
        mine.stop_claiming()
        loop.result(timeout=30)  # run() returns once the work in flight is handed back
        with Session(parts.engine) as session:
            row = session.exec(select(Node.lease_owner, Node.lease_expires_at, Node.wake_at))
            assert row.one() == (None, None, None)
    finally:
        held.answer.set()
    assert portal.call(other.tick) == 1
    portal.call(other.drain)
    assert (other.claims, other.takeovers) == (1, 0)
    assert node(client, operator, "n1")["power_state"] == "on"


def test_a_power_on_taken_over_after_the_machine_booted_is_not_repeated(
    client: TestClient, operator: dict[str, str], admin: dict[str, str], fleet: HeldFleet
) -> None:
    """A replica died between powering a machine on and recording it; the installer
    has called back since. The replica taking the node over must not power the machine
    on again: that would cut its installation short."""
    parts = services(client)
    role = {"name": "compute", "default_image": "rocky-9"}
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
    fake = deploying.enroll(client, operator, fleet, "n1", 1, role="compute")
    for action, body in (("inspect", {}), ("provision", {"role": "compute"})):
        response = client.post(f"/api/v1/nodes/n1/actions/{action}", json=body, headers=operator)
        assert response.status_code == 202, response.text
        tick(client)
    assert node(client, operator, "n1")["state"] == "provisioning"
    deployment = table_of(Deployment)
    with Session(parts.engine) as session:
        session.execute(
            deployment.update()
            .where(deployment.c.kind == "provision")
            .values(step="powering", status="started")
        )
        session.execute(
            update(Node).values(
                wake_at=None,
                lease_owner="dead-host:1:00000000",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
        session.commit()
    fake.calls.clear()
    fake.boots.clear()
    tick(client)
    assert "set_power" not in fake.calls, fake.calls
    assert fake.boots == [], fake.boots
    with Session(parts.engine) as session:
        provision = select(Deployment.step).where(col(Deployment.kind) == "provision")
        assert session.exec(provision).one() == "install"
    assert node(client, operator, "n1")["state"] == "provisioning"


def test_replicas_starting_at_once_migrate_once(database_url: str) -> None:
    """Two replicas start on an empty database at the same moment: one creates the
    schema, the other waits for it (PostgreSQL: an advisory lock) and finds it done."""
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL; SQLite serves one process")
    engines = [make_engine(database_url) for _ in range(2)]
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def migrate(engine: Engine) -> None:
        start.wait(10)
        try:
            db.upgrade(engine)
        except BaseException as exc:  # shown below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not failures, failures
        with engines[0].connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1, versions
    finally:
        for engine in engines:
            engine.dispose()
