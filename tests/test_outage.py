"""provisioner/outage.py: a database outage told apart from other failures, logged once
when it starts and once when it ends; and two loops that report to it, as an outage
meets them (tests/replicas/test_db_restart.py has the whole of it, on PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import uuid
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from provisioner import db, outage
from provisioner.app import create_app
from provisioner.boot import hops
from provisioner.boot.hops import HopRecorder
from provisioner.models import BootHop, table_of
from provisioner.settings import Settings
from provisioner.timeline import EventKind

REFUSED = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'


def wrapped(driver: Exception, *, invalidated: bool = False) -> DBAPIError:
    """``driver`` as SQLAlchemy raises it, with the statement and a secret parameter."""
    statement, params = "SELECT * FROM bmc WHERE password = %(p)s", {"p": "hunter2"}
    base = psycopg.Error if isinstance(driver, psycopg.Error) else sqlite3.Error
    error = DBAPIError.instance(statement, params, driver, base, connection_invalidated=invalidated)
    assert isinstance(error, DBAPIError)
    return error


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (psycopg.OperationalError(REFUSED), True),  # no SQLSTATE: never answered
        (psycopg.errors.AdminShutdown("terminating connection"), True),  # 57P01
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.ConnectionFailure("connection failure"), True),  # class 08
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),  # 40P01
        (psycopg.errors.QueryCanceled("canceling statement"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: node"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_unreachable_tells_an_outage_from_a_failed_statement(error: Exception, down: bool) -> None:
    assert outage.unreachable(error) is down
    if not isinstance(error, ValueError):
        assert outage.unreachable(wrapped(error)) is down


def test_a_connection_sqlalchemy_found_dead_is_an_outage_whatever_its_class() -> None:
    dead = wrapped(psycopg.InterfaceError("the connection is closed"), invalidated=True)
    assert isinstance(dead, InterfaceError)
    assert outage.unreachable(dead)
    alive = wrapped(psycopg.InterfaceError("the connection is closed"))
    assert not outage.unreachable(alive)


def test_the_reason_is_the_drivers_first_line_without_statement_or_parameters() -> None:
    error = wrapped(psycopg.OperationalError(f"connection failed: {REFUSED}\n\tIs it running?"))
    assert isinstance(error, OperationalError)
    assert "hunter2" in str(error)
    assert "SELECT" in str(error)
    assert outage.reason(error) == f"connection failed: {REFUSED}"
    assert outage.reason(psycopg.OperationalError("x" * 500)).endswith("x...")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "provisioner.outage"]


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    database = outage.Outage(clock)
    database.answered()  # no outage: nothing to say
    assert messages(caplog) == []
    assert not database.down
    for i in range(100):
        database.failed(f"round {i}", wrapped(psycopg.OperationalError(REFUSED)))
    assert database.down
    clock.now += 10.25
    database.answered()
    database.answered()
    assert messages(caplog) == [
        f"database unreachable: {REFUSED} (round 0); further failures are not logged "
        "until it answers again",
        "database reachable again after 10.2 s (100 failures meanwhile)",
    ]
    assert not [r for r in caplog.records if r.exc_info]
    assert not database.down
    assert database.outages == 1
    # The next outage is news again.
    database.failed("tick", psycopg.errors.AdminShutdown("terminating connection"))
    assert len(messages(caplog)) == 3
    assert database.outages == 2


def test_any_other_failure_is_logged_every_time_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = outage.Outage()
    for _ in range(3):
        try:
            raise IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate"))
        except IntegrityError as exc:
            database.failed("webhook delivery round", exc)
    logged = [r for r in caplog.records if r.name == "provisioner.outage"]
    assert [r.getMessage() for r in logged] == ["webhook delivery round failed"] * 3
    assert all(r.exc_info for r in logged)
    assert not database.down


def test_watch_reports_a_rounds_failure_and_lets_the_loop_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = outage.Outage()
    with database.watch("power sync"):
        raise wrapped(psycopg.OperationalError(REFUSED))
    assert database.down
    with database.watch("power sync"):
        pass  # a round that reached the database
    assert not database.down
    assert len(messages(caplog)) == 2


def test_failures_from_many_threads_start_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    database = outage.Outage()
    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        for _ in range(50):
            database.failed("step", psycopg.OperationalError(REFUSED))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database.answered()
    assert len(messages(caplog)) == 2
    assert messages(caplog)[1].endswith("(400 failures meanwhile)")


def test_one_outage_per_engine() -> None:
    first, second = create_engine("sqlite://"), create_engine("sqlite://")
    assert outage.of(first) is outage.of(first)
    assert outage.of(first) is not outage.of(second)


# ---- as the loops meet it --------------------------------------------------------


def refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, psycopg.OperationalError(REFUSED))


def test_a_step_whose_lease_cannot_be_released_still_leaves_the_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database went away under a step: it fails, and so does the release of its
    lease. The node must leave the steps in flight all the same (else its lease would
    be renewed for ever and the node never worked on again), and its lease is released
    at the next tick that reaches the database."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    reconciler = create_app(settings).state.services.reconciler
    released: list[uuid.UUID] = []

    def load(node_id: uuid.UUID) -> None:
        raise refused()

    def release(node_id: uuid.UUID, cut: bool = False) -> None:
        released.append(node_id)
        if len(released) == 1:
            raise refused()

    monkeypatch.setattr(reconciler, "_load", load)
    monkeypatch.setattr(reconciler, "_release", release)
    node_id = uuid.uuid4()

    async def work() -> None:
        reconciler._running[node_id] = asyncio.current_task()  # as tick() does
        await reconciler._work(node_id)

    asyncio.run(work())
    assert released == [node_id]
    assert reconciler.leases_held == 0
    assert len(messages(caplog)) == 1  # the outage, once, no traceback
    assert not [r for r in caplog.records if r.exc_info]
    # The database answers again: the next tick releases it, once.
    monkeypatch.setattr(reconciler, "_claim", lambda room: [])
    for _ in range(2):
        assert asyncio.run(reconciler.tick()) == 0
    assert released == [node_id, node_id]
    assert messages(caplog)[1].startswith("database reachable again after")


def test_boot_hops_recorded_in_an_outage_are_written_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    db.upgrade(good)
    down = create_engine("postgresql+psycopg://u:p@127.0.0.1:1/none")  # refused
    recorder = HopRecorder(down, keep=1000)

    async def outage_then_back() -> None:
        recorder.unknown("10.0.0.5", None, EventKind.BOOT_TFTP, "undionly.kpxe")
        await recorder.flush()
        recorder.unknown("10.0.0.5", None, EventKind.BOOT_IPXE, "bootstrap.ipxe")
        await recorder.flush()
        recorder._engine = good  # the database answers again
        await recorder.flush()

    asyncio.run(outage_then_back())
    hop = table_of(BootHop)
    with good.connect() as connection:
        details = connection.execute(select(hop.c.detail).order_by(hop.c.id)).scalars().all()
        assert connection.execute(select(func.count()).select_from(hop)).scalar() == 2
    assert details == ["undionly.kpxe", "bootstrap.ipxe"]
    assert len(messages(caplog)) == 2  # unreachable, reachable again
    assert recorder.dropped == 0
    good.dispose()
    down.dispose()


def test_boot_hops_held_in_an_outage_are_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hops, "HELD", 2)
    good = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    db.upgrade(good)
    down = create_engine("postgresql+psycopg://u:p@127.0.0.1:1/none")
    recorder = HopRecorder(down, keep=1000)

    async def storm() -> None:
        for name in ("first", "second", "third"):
            recorder.unknown("10.0.0.5", None, EventKind.BOOT_TFTP, name)
        await recorder.flush()
        recorder.unknown("10.0.0.5", None, EventKind.BOOT_TFTP, "fourth")
        await recorder.flush()
        assert recorder.dropped == 2
        recorder._engine = good
        await recorder.flush()

    asyncio.run(storm())
    hop = table_of(BootHop)
    with good.connect() as connection:
        details = connection.execute(select(hop.c.detail).order_by(hop.c.id)).scalars().all()
    assert details == ["first", "second"]
    assert recorder.dropped == 0
    dropped = [r.getMessage() for r in caplog.records if r.name == "provisioner.boot.hops"]
    assert len(dropped) == 2, dropped  # when it starts dropping, and how many in all
    assert dropped[1] == "2 boot hops were dropped while the database was down"
    good.dispose()
    down.dispose()
