"""Power: carrying out an operator's power action, and the periodic power sync that keeps
every node's recorded power state true to its BMC."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, or_
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import db, outage
from provisioner.bmc.base import BmcError, Driver, PowerAction, Target
from provisioner.bmc.credentials import deadline_for, power_deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.lifecycle import State
from provisioner.models import Bmc, Node, table_of, utcnow
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.timeline import Actor, EventKind, event_row, note_many

log = logging.getLogger(__name__)


def _apply(driver: Driver, action: PowerAction) -> str:
    # A cycle of a machine that is off would be refused by the BMC: power it on instead,
    # which is what an operator asking for a cycle wants.
    if action is PowerAction.CYCLE and driver.power_state() == "off":
        action = PowerAction.ON
    driver.set_power(action)
    return driver.power_state()


async def carry_out(pool: BmcPool, target: Target, action: str) -> str:
    """Do ``action`` (on, off, cycle, reset, soft-off); return the power state after."""
    wanted = PowerAction(action)
    return await pool.call(target, lambda d: _apply(d, wanted), deadline=power_deadline_for(target))


@dataclass
class SyncReport:
    polled: int = 0
    changed: int = 0
    failed: int = 0
    flagged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Polled:
    node_id: uuid.UUID
    name: str
    before: str
    failures: int
    state: str | None
    error: str | None


class PowerSync:
    """Polls every enrolled node's BMC; a silent BMC marks only its own node."""

    def __init__(self, engine: Engine, vault: Vault, pool: BmcPool, settings: Settings) -> None:
        self.engine = engine
        self.vault = vault
        self.pool = pool
        self.settings = settings
        # Rounds this replica ran since it started (/metrics).
        self.rounds = 0

    async def run(self) -> None:
        while True:
            # A round always asks the database (whether one is due, at least).
            with outage.of(self.engine).watch("power sync"):
                report = await self.sync_if_due()
                if report is not None:
                    log.info(
                        "power sync: %d polled, %d changed, %d failed",
                        report.polled,
                        report.changed,
                        report.failed,
                    )
            await asyncio.sleep(self.settings.power_sync_interval)

    async def sync_if_due(self) -> SyncReport | None:
        """A sync round, unless another replica is running one or ran one less than an
        interval ago (every replica runs this loop, one at a time does the round); None
        when this replica had nothing to do."""
        async with db.only_one(self.engine, "provisioner:power-sync") as mine:
            if not mine or not await run_in_threadpool(self._round_due):
                return None
            self.rounds += 1
            return await self.sync_once()

    async def sync_once(self) -> SyncReport:
        rows = await run_in_threadpool(self._due)
        polled = await asyncio.gather(*(self._poll(*row) for row in rows))
        return await run_in_threadpool(self._record, polled)

    def _polled(self) -> list[Any]:
        """Which nodes a round polls."""
        return [
            col(Node.state) != State.DISCOVERED.value,
            col(Node.maintenance).is_(False),
            col(Node.target_power).is_(None),
            col(Node.power_failures) < self.settings.power_sync_failure_limit,
        ]

    def _round_due(self) -> bool:
        """Whether a node to poll was last polled (by any replica) an interval ago, or
        never. A tenth of an interval early: the rounds of one replica, an interval
        apart, must not miss each other by the time a round takes."""
        if self.engine.dialect.name != "postgresql":
            return True  # one process: its own loop's interval is the schedule
        since = utcnow() - timedelta(seconds=0.9 * self.settings.power_sync_interval)
        stale = or_(col(Node.power_checked_at).is_(None), col(Node.power_checked_at) < since)
        with Session(self.engine) as session:
            query = (
                select(Node.id)
                .join(Bmc, col(Bmc.node_id) == col(Node.id))
                .where(*self._polled(), stale)
                .limit(1)
            )
            return session.exec(query).first() is not None

    def _due(self) -> list[tuple[Node, Target]]:
        with Session(self.engine) as session:
            query = (
                select(Node, Bmc).join(Bmc, col(Bmc.node_id) == col(Node.id)).where(*self._polled())
            )
            return [
                (node, target_for(bmc, self.vault, self.settings))
                for node, bmc in session.exec(query).all()
            ]

    async def _poll(self, node: Node, target: Target) -> _Polled:
        try:
            state = await self.pool.call(
                target, lambda d: d.power_state(), deadline=deadline_for(target), idempotent=True
            )
        except BmcError as err:
            return _Polled(
                node.id, node.name, node.power_state, node.power_failures, None, str(err)
            )
        return _Polled(node.id, node.name, node.power_state, node.power_failures, state, None)

    def _record(self, polled: list[_Polled]) -> SyncReport:
        """Write a sync's results in one transaction of three executemany statements: a
        thousand ORM updates would take longer than polling the BMCs did."""
        report = SyncReport(polled=len(polled))
        now = utcnow()
        limit = self.settings.power_sync_failure_limit
        quiet: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for p in polled:
            if p.state is not None and p.state == p.before and p.failures == 0:
                quiet.append({"nid": p.node_id})
                continue
            if p.state is not None:
                report.changed += p.state != p.before
                row = {"ps": p.state, "pf": 0, "pr": None}
                kind, message = EventKind.POWER_SYNC, f"power is {p.state} (was {p.before})"
            else:
                report.failed += 1
                failures = p.failures + 1
                flagged = failures >= limit
                reason = (
                    f"no longer polled after {failures} failures in a row: {p.error}"
                    if flagged
                    else p.error
                )
                row = {"ps": "error" if flagged else "unknown", "pf": failures, "pr": reason}
                if flagged:
                    report.flagged.append(p.name)
                kind = EventKind.POWER_SYNC_FLAGGED if flagged else EventKind.POWER_SYNC_FAILED
                message = str(reason)
            changed.append({"nid": p.node_id, **row})
            # One event when a node's power changes or first fails, not one per poll.
            if p.state is not None or p.failures == 0 or kind is EventKind.POWER_SYNC_FLAGGED:
                events.append(event_row(p.node_id, kind, Actor.POWER_SYNC, message, time=now))
        node = table_of(Node)
        with Session(self.engine) as session:
            connection = session.connection()
            # A round updates every node polled: in one order with the others' updates.
            db.lock_in_order(connection, node, [p.node_id for p in polled])
            if changed:
                connection.execute(
                    node.update()
                    .where(node.c.id == bindparam("nid"))
                    .values(
                        power_state=bindparam("ps"),
                        power_failures=bindparam("pf"),
                        power_reason=bindparam("pr"),
                        power_checked_at=now,
                        version=node.c.version + 1,
                        updated_at=now,
                    ),
                    changed,
                )
            if quiet:
                connection.execute(
                    node.update().where(node.c.id == bindparam("nid")).values(power_checked_at=now),
                    quiet,
                )
            note_many(connection, _of_existing_nodes(connection, events))
            session.commit()
        return report


# Far below SQLite's limit on the parameters of one statement.
_IDS_PER_QUERY = 1000


def _of_existing_nodes(
    connection: Connection, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The events whose node still exists. A node deleted while its BMC was polled has no
    row for its event to refer to, and one such event would fail the whole batch. The
    caller updated every event's node earlier in this transaction, which so holds those
    rows (a row lock on PostgreSQL, the write lock on SQLite): a node found here cannot
    be deleted before the commit."""
    ids = list({event["node_id"] for event in events})
    node = table_of(Node)
    existing: set[uuid.UUID] = set()
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        existing.update(connection.execute(select(node.c.id).where(node.c.id.in_(chunk))).scalars())
    return [event for event in events if event["node_id"] in existing]
