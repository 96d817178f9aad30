"""The reconciler: carries out what the API only records.

Each replica runs :meth:`Reconciler.run`. A tick *claims* nodes that need work by writing
a lease (owner, expiry) on their rows in one short transaction, runs one step per node
(power action, inspection), records the outcome and releases the lease; it renews the
leases of its steps in flight while they run. A crashed replica's leases expire and
another replica takes the work over; steps are idempotent, so doing one twice is
harmless. Nothing is held only in memory. A replica told to stop (SIGTERM) claims
nothing more, lets its steps in flight finish for :data:`HAND_BACK_AFTER` seconds and
hands back the leases of the rest, so that another replica takes them at its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, or_, update
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import db, deployments, nodes, outage, power, timeline
from provisioner.bmc.base import BmcError
from provisioner.bmc.credentials import target_for
from provisioner.bmc.pool import BmcPool
from provisioner.lifecycle import DEPLOYMENT_STATES, Action, IllegalAction, State
from provisioner.models import Bmc, Node, table_of, utcnow
from provisioner.profiles import ProfileSet
from provisioner.role_rules import RoleRules
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.step_runner import Means, StepRunner
from provisioner.steps import DeploymentKind
from provisioner.timeline import Actor, EventKind

log = logging.getLogger(__name__)

# Seconds a stopping replica waits for its steps in flight before it hands them back.
HAND_BACK_AFTER = 3.0


def _needs_work(now: datetime) -> Any:
    working = and_(
        col(Node.maintenance).is_(False),
        or_(
            and_(col(Node.state) == State.ENROLLED.value, col(Node.auto_inspect).is_(True)),
            and_(col(Node.state) == State.READY.value, col(Node.auto_provision).is_(True)),
            and_(
                col(Node.state).in_(sorted(DEPLOYMENT_STATES)),
                or_(col(Node.wake_at).is_(None), col(Node.wake_at) <= now),
            ),
        ),
    )
    # An explicit power request is carried out even in maintenance: an operator asked.
    return or_(col(Node.target_power).is_not(None), working)


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        vault: Vault,
        pool: BmcPool,
        settings: Settings,
        profiles: Callable[[], ProfileSet],
        role_rules: RoleRules | None = None,
    ) -> None:
        self.engine = engine
        self.role_rules = role_rules or RoleRules()
        self.vault = vault
        self.pool = pool
        self.settings = settings
        self.profiles = profiles
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Nodes whose lease this replica failed to release (the database was down), with
        # whether their step was cut short: released at the next tick that reaches the
        # database, rather than left idle until the lease runs out.
        self._unreleased: dict[uuid.UUID, bool] = {}
        # Since start, for /metrics: nodes claimed, and of those, taken from a replica
        # whose lease had run out.
        self.claims = 0
        self.takeovers = 0
        self._stopping = False
        self.outage = outage.of(engine)
        self.steps = StepRunner(
            Means(engine, vault, pool, settings, profiles, self.owner, self.role_rules)
        )

    async def run(self) -> None:
        """Tick until :meth:`stop_claiming`, then hand the work in flight back."""
        renewing = asyncio.create_task(self._keep_leases(), name="lease-renewal")
        try:
            while not self._stopping:
                try:
                    await self.tick()
                except Exception as exc:
                    # A database outage must not end the loop; the next tick tries again.
                    self.outage.failed("reconciler tick", exc)
                # Jittered: replicas ticking in a fixed order would hand each node that
                # falls due alone to whichever ticks first, every time.
                pause = self.settings.reconcile_interval * random.uniform(0.75, 1.25)  # noqa: S311
                until = time.monotonic() + pause
                while not self._stopping and time.monotonic() < until:
                    await asyncio.sleep(min(0.1, until - time.monotonic()))
            await self.hand_back(HAND_BACK_AFTER)
        finally:
            renewing.cancel()

    def stop_claiming(self) -> None:
        """Claim no more nodes: the replica is stopping. Safe in a signal handler; the
        loop in :meth:`run` sees it within 0.1 s and hands its work in flight back."""
        self._stopping = True

    async def hand_back(self, grace: float) -> None:
        """Let the steps in flight finish for ``grace`` seconds, cut the others short
        (a step is recorded in one transaction once it is done, and is safe to redo)
        and release every lease this replica holds, waking the nodes it cut short, so
        that another replica takes them at its next tick instead of after the lease
        (see :meth:`_release`)."""
        cut: list[uuid.UUID] = []
        if self._running:
            tasks = dict(self._running)
            await asyncio.wait(tasks.values(), timeout=grace)
            cut = [node_id for node_id, task in tasks.items() if not task.done()]
            for node_id in cut:
                tasks[node_id].cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        try:
            left = await run_in_threadpool(self._release_all)
        except Exception as exc:
            # The database is gone: the leases will expire.
            self.outage.failed("stopping: handing the leases back", exc)
            return
        log.info(
            "stopping: %d steps cut short after %g s and handed back (%d leases left)",
            len(cut),
            grace,
            left,
        )

    async def _keep_leases(self) -> None:
        """Renew the leases of the steps in flight every third of the lease time: a step
        may outlast one (a power-on held back by the staggering, a slow BMC), and only
        a replica that has stopped renewing, because it died or hangs, loses its nodes."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if not self._running:
                continue
            with self.outage.watch("renewing the reconciler's leases"):
                await run_in_threadpool(self._renew, list(self._running))

    def _renew(self, node_ids: list[uuid.UUID]) -> None:
        expires = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        with Session(self.engine) as session:
            db.lock_in_order(session, table_of(Node), node_ids)
            session.execute(
                update(Node)
                .where(col(Node.id).in_(node_ids), col(Node.lease_owner) == self.owner)
                .values(lease_expires_at=expires)
            )
            session.commit()

    async def tick(self) -> int:
        """Claim what is due and start one step per claimed node; returns how many."""
        room = self.settings.bmc_workers - len(self._running)
        if room <= 0:
            return 0
        if self._unreleased:
            # Not those claimed again since (their lease ran out): their step is running.
            late = {n: cut for n, cut in self._unreleased.items() if n not in self._running}
            await run_in_threadpool(self._release_each, late)
            for node_id in late:
                self._unreleased.pop(node_id, None)
        claimed = await run_in_threadpool(self._claim, room)
        self.outage.answered()
        for node_id in claimed:
            self._unreleased.pop(node_id, None)
            self._running[node_id] = asyncio.create_task(self._work(node_id))
        return len(claimed)

    @property
    def leases_held(self) -> int:
        return len(self._running)

    async def drain(self) -> None:
        """Wait for the steps in flight (tests and shutdown)."""
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _claim(self, limit: int) -> list[uuid.UUID]:
        now = utcnow()
        free = or_(col(Node.lease_owner).is_(None), col(Node.lease_expires_at) < now)
        with Session(self.engine) as session:
            query = select(Node.id, Node.name, Node.lease_owner).where(_needs_work(now), free)
            query = query.order_by(col(Node.updated_at))
            if self.engine.dialect.name == "postgresql":
                limit = min(limit, self._share(session, free, now))
            query = query.limit(limit)
            if self.engine.dialect.name == "postgresql":
                # FOR NO KEY UPDATE: the lease columns are not a key, and plain FOR UPDATE
                # would skip every node whose events or hops another transaction is
                # inserting at that moment (their foreign keys lock the node row too).
                query = query.with_for_update(skip_locked=True, key_share=True)
            claimed: list[uuid.UUID] = []
            taken_over: list[tuple[str, str]] = []
            for node_id, name, previous in session.exec(query).all():
                # Conditional: another replica may have claimed it since the select.
                result = session.execute(
                    update(Node)
                    .where(col(Node.id) == node_id, free)
                    .values(
                        lease_owner=self.owner,
                        lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds),
                    )
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(node_id)
                    if previous is not None and previous != self.owner:
                        taken_over.append((name, previous))
            session.commit()
        self.claims += len(claimed)
        self.takeovers += len(taken_over)
        for name, previous in taken_over:
            # Its owner stopped renewing the lease: it died, or hangs.
            log.warning("node %s: taking over from %s, whose lease ran out", name, previous)
        return claimed

    @staticmethod
    def _share(session: Session, free: Any, now: datetime) -> int:
        """This replica's share of the nodes due now: as many as each replica would take
        if all took the same, so that one replica's pass does not take everything due
        while the others find nothing left."""
        due = session.exec(select(func.count()).select_from(Node).where(_needs_work(now), free))
        return max(1, math.ceil(due.one() / db.replicas(session)))

    def _release_all(self) -> int:
        """Release whatever this replica still holds (a claim whose step never started)."""
        with Session(self.engine) as session:
            released = session.execute(
                update(Node)
                .where(col(Node.lease_owner) == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            session.commit()
        return int(released.rowcount)  # type: ignore[attr-defined]

    def _release_each(self, leases: dict[uuid.UUID, bool]) -> None:
        for node_id, cut in leases.items():
            self._release(node_id, cut)

    def _release(self, node_id: uuid.UUID, cut: bool = False) -> None:
        """Release the node's lease. A step cut short may have set the node's wake time
        to the lease's end (the power step does, in case the replica dies): it is due
        now. A recording of the step still under way in a thread either commits before
        this (the row's lock orders them) or finds the lease gone and records nothing."""
        changes: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if cut:
            changes["wake_at"] = None
        with Session(self.engine) as session:
            session.execute(
                update(Node)
                .where(col(Node.id) == node_id, col(Node.lease_owner) == self.owner)
                .values(**changes)
            )
            session.commit()

    async def _work(self, node_id: uuid.UUID) -> None:
        cut = False
        try:
            loaded = await run_in_threadpool(self._load, node_id)
            if loaded is None:
                return
            node, bmc = loaded
            if node.target_power:
                await self._power(node, bmc)
            elif node.state == State.ENROLLED.value and node.auto_inspect:
                if await run_in_threadpool(self._start_inspection, node):
                    await self.steps.advance(node, bmc)
            elif node.state in DEPLOYMENT_STATES:
                await self.steps.advance(node, bmc)
            elif node.state == State.READY.value and node.auto_provision:
                await run_in_threadpool(self.steps.auto_provision, node)
        except asyncio.CancelledError:
            cut = True  # by hand_back: the replica is stopping
            raise
        except Exception as exc:
            # A step whose result was not recorded (each is, in one transaction) is
            # done again by whoever claims the node next.
            self.outage.failed(f"step on node {node_id}", exc)
        finally:
            try:
                await run_in_threadpool(self._release, node_id, cut)
            except Exception as exc:
                # The database is gone: the lease is released at a later tick (or, no
                # longer renewed once the node is out of _running, runs out).
                self.outage.failed(f"releasing node {node_id}", exc)
                self._unreleased[node_id] = cut
            finally:
                # Always: a node left here would have its lease renewed for ever and
                # never be worked on again, and would take a place of the replica's.
                self._running.pop(node_id, None)

    def _load(self, node_id: uuid.UUID) -> tuple[Node, Bmc | None] | None:
        with Session(self.engine, expire_on_commit=False) as session:
            node = session.get(Node, node_id)
            if node is None:
                return None
            return node, session.get(Bmc, node_id)

    # ---- steps ---------------------------------------------------------------------

    async def _power(self, node: Node, bmc: Bmc | None) -> None:
        action = node.target_power or ""
        if bmc is None:
            message = f"power {action}: the node has no BMC"
            await run_in_threadpool(self._record_power, node.id, None, message)
            return
        target = target_for(bmc, self.vault, self.settings)
        try:
            state = await power.carry_out(self.pool, target, action)
        except BmcError as err:
            await run_in_threadpool(
                self._record_power, node.id, None, f"power {action} failed: {err}"
            )
            return
        await run_in_threadpool(self._record_power, node.id, state, f"power {action} done: {state}")

    def _record_power(self, node_id: uuid.UUID, state: str | None, message: str) -> None:
        changes: dict[str, Any] = {"target_power": None, "power_checked_at": utcnow()}
        if state is None:
            changes.update(power_state="unknown", power_reason=message)
        else:
            changes.update(power_state=state, power_reason=None, power_failures=0)
        kind = EventKind.POWER if state else EventKind.POWER_FAILED
        self._write(node_id, changes, kind, message)

    def _start_inspection(self, node: Node) -> bool:
        """Inspect a node enrolled with ``auto_inspect``, as the operator's inspect
        action would; whether it started."""
        started = False

        def start(session: Session, current: Node) -> None:
            nonlocal started
            deployments.start(
                session,
                self.vault,
                current.id,
                kind=DeploymentKind.INSPECT,
                method=nodes.actions.inspector(self.settings),
                role=None,
                image=None,
                timeout=self.settings.deploy_timeout,
            )
            timeline.transition(
                session,
                current,
                Action.INSPECT,
                Actor.PROVISIONER,
                "inspection after enrollment",
                changes={"auto_inspect": False, "wake_at": None},
                lease_owner=self.owner,
            )
            started = True

        self._retrying(node.id, Action.INSPECT.value, start)
        return started

    # ---- recording -----------------------------------------------------------------

    def _write(
        self, node_id: uuid.UUID, changes: dict[str, Any], kind: EventKind, message: str
    ) -> None:
        """Record facts about the node (not its state) and their event."""

        def write(session: Session, node: Node) -> None:
            timeline.change(session, node, changes, kind, Actor.PROVISIONER, message)

        self._retrying(node_id, kind.value, write)

    def _retrying(
        self, node_id: uuid.UUID, what: str, write: Callable[[Session, Node], None]
    ) -> None:
        """Run ``write`` on a fresh read of the node until it is not stale: the power
        sync or a callback may have changed the row since; an operator's move makes the
        write illegal, and then it is dropped."""
        for _ in range(5):
            with Session(self.engine, expire_on_commit=False) as session:
                node = session.get(Node, node_id)
                if node is None:
                    return
                try:
                    write(session, node)
                except timeline.Stale:
                    session.rollback()
                    continue
                except IllegalAction:
                    session.rollback()
                    log.info("node %s: %s no longer applies", node.name, what)
                    return
                session.commit()
                return
        log.error("node %s: could not record %s: the node kept changing", node_id, what)
