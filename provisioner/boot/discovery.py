"""Discovery of unknown machines, bounded.

A machine that network-boots with a MAC no node has is recorded as a ``discovered``
node. Anyone on a boot network can ask ``/boot/ipxe`` with any MAC, without a token, so
recording is bounded twice: a token bucket per process (``PROVISIONER_DISCOVERY_RATE``
and ``_BURST``: a request over it records nothing and its machine is asked to boot again
later), and a total per database (``PROVISIONER_DISCOVERY_MAX``), kept by deleting the
oldest discovered nodes after each new one. Counting after the insert keeps the total
right however many replicas discover at once: each one deletes what is over the bound
when it looks, and a node another replica deleted first is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, func, insert, or_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from provisioner import nodes, timeline
from provisioner.lifecycle import State
from provisioner.metrics import DiscoveryCounters
from provisioner.models import Nic, Node, table_of, utcnow
from provisioner.settings import Settings
from provisioner.timeline import Actor, EventKind

log = logging.getLogger(__name__)

_node = table_of(Node)
_nic = table_of(Nic)
_DISCOVERED = State.DISCOVERED.value
# Names tried for one new machine: its own, then free ones as other nodes take them.
_NAME_TRIES = 3
# Who deleted a pruned node, for the deletion's log line.
PRUNER = "discovery (PROVISIONER_DISCOVERY_MAX)"


class TokenBucket:
    """``rate`` takes per second on average, ``burst`` at once; a rate of 0 allows none."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst) if rate > 0 else 0.0
        self._at = clock()
        # Boot requests are answered on the event loop and in worker threads.
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class Discovery:
    def __init__(self, engine: Engine, settings: Settings, counters: DiscoveryCounters) -> None:
        self._engine = engine
        self._keep = settings.discovery_max
        self._bucket = TokenBucket(settings.discovery_rate, settings.discovery_burst)
        self._counters = counters

    def record(self, mac: str) -> uuid.UUID | None:
        """The node ``mac`` is now recorded as, or None when the rate turned it away."""
        if not self._bucket.take():
            self._counters.dropped.inc()
            return None
        node_id, new = self._insert(mac)
        if new:
            self._counters.pruned.inc(self._prune(node_id))
        return node_id

    def _insert(self, mac: str) -> tuple[uuid.UUID, bool]:
        """Record ``mac`` as a ``discovered`` node, once however often it asks; whether
        this call made it."""
        node_id = uuid.uuid4()
        base = name = f"discovered-{mac.replace(':', '')}"
        with Session(self._engine) as session:
            for _ in range(_NAME_TRIES):
                try:
                    self._write(session, node_id, name, mac)
                except IntegrityError:
                    # A concurrent request for the same MAC won, or another node has the
                    # name (an operator may name or rename a node anything).
                    session.rollback()
                    found = session.execute(
                        select(_nic.c.node_id).where(_nic.c.mac == mac)
                    ).scalar_one_or_none()
                    if found is not None:
                        return found, False
                    name = _free_name(session, base)
                else:
                    return node_id, True
        raise RuntimeError(f"discovery: no free name for {mac} after {_NAME_TRIES} tries")

    @staticmethod
    def _write(session: Session, node_id: uuid.UUID, name: str, mac: str) -> None:
        now = utcnow()
        session.execute(
            insert(_node).values(
                id=node_id, name=name, state=_DISCOVERED, created_at=now, updated_at=now
            )
        )
        session.execute(insert(_nic).values(node_id=node_id, mac=mac, pxe=True))
        # In this transaction, not the boot trace's batch: the node may be pruned
        # before the batch is written.
        message = f"network boot from unknown MAC {mac}"
        timeline.note(session, node_id, EventKind.DISCOVERED, Actor.NODE, message)
        session.commit()

    def _prune(self, newest: uuid.UUID) -> int:
        """Delete the oldest discovered nodes over the maximum, through the node
        service's deletion path; how many."""
        with Session(self._engine, expire_on_commit=False) as session:
            count = session.exec(
                select(func.count()).select_from(Node).where(col(Node.state) == _DISCOVERED)
            ).one()
            if count <= self._keep:
                return 0
            oldest = session.exec(
                select(Node)
                .where(col(Node.state) == _DISCOVERED, col(Node.id) != newest)
                .order_by(col(Node.created_at), col(Node.id))
                .limit(count - self._keep)
            ).all()
            pruned = 0
            for node in oldest:
                try:
                    # Not claimed: gone or adopted meanwhile, and nothing was written.
                    if _claim(session, node):
                        nodes.remove(session, node, PRUNER)
                        pruned += 1
                except OperationalError as err:
                    # Pruning is housekeeping: the next discovered node prunes again.
                    session.rollback()
                    log.warning("discovery: could not prune %s now: %s", node.name, err.orig)
        return pruned


def _free_name(session: Session, base: str) -> str:
    """``base``, or the first of ``base-2``, ``base-3``... that no node has: the same
    machine gets the same name whichever replica records it."""
    taken = set(
        session.execute(
            select(_node.c.name).where(
                or_(_node.c.name == base, _node.c.name.startswith(f"{base}-", autoescape=True))
            )
        ).scalars()
    )
    return next(
        name
        for name in (base, *(f"{base}-{n}" for n in range(2, len(taken) + 3)))
        if name not in taken
    )


def _claim(session: Session, node: Node) -> bool:
    """Hold ``node`` until its deletion commits, if it is still as read and still
    discovered: one adopted by an import or an enrollment meanwhile is no longer a
    discovered node and must stay.

    Its NICs are locked first, as the boot trace's writer takes them (NIC, then the
    node through an event's foreign key): the other order deadlocked the two on
    PostgreSQL."""
    session.execute(select(_nic.c.id).where(_nic.c.node_id == node.id).with_for_update())
    claimed = session.execute(
        update(_node)
        .where(
            _node.c.id == node.id,
            _node.c.version == node.version,
            _node.c.state == _DISCOVERED,
        )
        .values(version=node.version + 1)
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]
