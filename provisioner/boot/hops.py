"""The boot trace: every hop a machine makes (DHCP answer, TFTP file, iPXE script, kernel,
answer file)
written to its node's timeline, or to a bounded table of hops no node could be found for.

Hops are written in batches by a background task, not in the request: a boot storm is
hundreds of requests a second, and one INSERT per request would make the boot routes
wait on the database's write lock. A hop may therefore show up a fraction of a second
after its response; a crash can lose the last fraction of a second of hops, never a
state change (state changes are written in their own request's transaction). While the
database is down the hops are held in memory, up to :data:`HELD`, and written once it
answers again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from provisioner import outage
from provisioner.models import BootHop, Deployment, Nic, Node, table_of, utcnow
from provisioner.secrets import hash_token
from provisioner.timeline import Actor, EventKind, event_row, note_many

log = logging.getLogger(__name__)

_nic = table_of(Nic)
_hop = table_of(BootHop)
_deployment = table_of(Deployment)
_node = table_of(Node)

# How far back a newly seen boot address claims anonymous hops: one boot's worth.
CLAIM_WINDOW = timedelta(minutes=5)
# Hops of each kind held while the database is down, at most: a boot storm during a long
# outage must not grow the process without bound. Later hops are dropped (and counted).
HELD = 20_000


@dataclass
class _Pending:
    events: list[dict[str, object]] = field(default_factory=list)
    unknown: list[dict[str, object]] = field(default_factory=list)
    boot_ips: dict[str, str] = field(default_factory=dict)
    # Hops whose node is known only by a deployment token (boot files) or a booting
    # address (TFTP): looked up at write time, after this batch's boot addresses.
    by_token: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    by_address: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    # Hops known by the MAC they came from (DHCP): (MAC, address, event).
    by_mac: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def __len__(self) -> int:
        kinds = (self.events, self.unknown, self.boot_ips, self.by_token, self.by_address)
        return sum(map(len, kinds)) + len(self.by_mac)

    def oldest(self, count: int) -> _Pending:
        """The first ``count`` hops of each kind (the boot addresses: one per NIC)."""
        return _Pending(
            self.events[:count],
            self.unknown[:count],
            self.boot_ips,
            self.by_token[:count],
            self.by_address[:count],
            self.by_mac[:count],
        )

    def then(self, later: _Pending) -> _Pending:
        """This batch followed by ``later``: a newer boot address of a NIC wins."""
        return _Pending(
            self.events + later.events,
            self.unknown + later.unknown,
            {**self.boot_ips, **later.boot_ips},
            self.by_token + later.by_token,
            self.by_address + later.by_address,
            self.by_mac + later.by_mac,
        )


class HopRecorder:
    def __init__(self, engine: Engine, keep: int, interval: float = 0.25) -> None:
        self._engine = engine
        self._outage = outage.of(engine)
        self._keep = keep
        self._interval = interval
        self._pending = _Pending()
        self._writes = 0
        self.dropped = 0  # hops dropped over HELD in this outage
        self._flushing = asyncio.Lock()
        # Routes record hops from worker threads while flush swaps the batch out.
        self._lock = threading.Lock()

    def node(self, node_id: uuid.UUID, kind: EventKind, message: str) -> None:
        with self._lock:
            self._pending.events.append(event_row(node_id, kind, Actor.NODE, message))

    def by_token(self, token: str, client: str, kind: EventKind, message: str) -> None:
        """A hop of whichever node ``token``'s deployment belongs to."""
        event = _unplaced(kind, message)
        with self._lock:
            self._pending.by_token.append((hash_token(token), client, event))

    def by_address(self, client: str, kind: EventKind, message: str) -> None:
        """A hop of whichever node last booted from ``client``."""
        event = _unplaced(kind, message)
        with self._lock:
            self._pending.by_address.append((client, event))

    def by_mac(self, mac: str, client: str, kind: EventKind, message: str) -> None:
        """A hop of whichever node has a NIC with ``mac``; kept with the MAC if none."""
        event = _unplaced(kind, message)
        with self._lock:
            self._pending.by_mac.append((mac, client, event))

    def unknown(self, client: str, mac: str | None, kind: EventKind, detail: str) -> None:
        hop = {
            "time": utcnow(),
            "client": client,
            "mac": mac,
            "kind": kind.value,
            "detail": detail[:500],
        }
        with self._lock:
            self._pending.unknown.append(hop)

    def boot_ip(self, mac: str, address: str) -> None:
        """Remember which address a NIC boots from, to place its later TFTP hops."""
        with self._lock:
            self._pending.boot_ips[mac] = address

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Write every hop recorded so far, including those a running flush has taken."""
        async with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, _Pending()
            if not batch:
                return
            try:
                await run_in_threadpool(self._write, batch)
            except Exception as exc:
                # Neither an outage nor a bad batch may end the task.
                self._outage.failed(f"writing {len(batch)} boot hops", exc)
                if outage.unreachable(exc):
                    self._hold(batch)
                # Else the batch is dropped: it would fail again, and the trace is a
                # debugging aid.
                return
            self._outage.answered()
            if self.dropped:
                log.warning("%d boot hops were dropped while the database was down", self.dropped)
                self.dropped = 0

    def _hold(self, batch: _Pending) -> None:
        """Put a batch the database did not take back before the hops recorded since,
        for the next flush. Should the failure have been the lost answer to a commit
        that went through, the batch's hops are written twice: a trace may repeat a hop,
        it must not lose the boot of a machine that booted while the database was down."""
        with self._lock:
            held = batch.then(self._pending)
            self._pending = held.oldest(HELD)
            dropped = len(held) - len(self._pending)
        if dropped:
            if not self.dropped:  # once an outage, not once a flush
                log.warning(
                    "boot hops are held until the database answers, %d of each kind at "
                    "most: later ones are dropped meanwhile",
                    HELD,
                )
            self.dropped += dropped

    def _write(self, batch: _Pending) -> None:
        with self._engine.begin() as connection:
            if batch.boot_ips:
                # DHCP hands a freed address to another machine: only its newest user
                # keeps it.
                connection.execute(
                    update(_nic)
                    .where(_nic.c.boot_ip.in_(set(batch.boot_ips.values())))
                    .values(boot_ip=None)
                )
                connection.execute(
                    update(_nic)
                    .where(_nic.c.mac == bindparam("b_mac"))
                    .values(boot_ip=bindparam("b_ip")),
                    [{"b_mac": m, "b_ip": ip} for m, ip in batch.boot_ips.items()],
                )
                self._claim(connection, batch.boot_ips)
            events, unknown = self._place(connection, batch)
            note_many(connection, _of_existing_nodes(connection, events))
            if unknown:
                connection.execute(insert(_hop), unknown)
                self._writes += len(unknown)
                # Trimming on every flush would rescan the table; every keep/10 rows is
                # enough to hold it under 1.1 x keep.
                if self._writes >= self._keep // 10:
                    self._writes = 0
                    newest = connection.execute(select(func.max(_hop.c.id))).scalar_one()
                    connection.execute(delete(_hop).where(_hop.c.id <= newest - self._keep))

    @staticmethod
    def _claim(connection: Connection, boot_ips: dict[str, str]) -> None:
        """Move the recent anonymous hops of a newly known boot address, and those of its
        MAC, to its node: a machine's DHCP answer and first TFTP fetch come before the
        iPXE request that names it (and, for a machine not yet known, creates its node)."""
        since = utcnow() - CLAIM_WINDOW
        owners = _owners_of(connection, set(boot_ips.values()))
        for mac, address in boot_ips.items():
            node_id = owners.get(address)
            if node_id is None:
                continue
            by_address = and_(_hop.c.client == address, _hop.c.mac.is_(None))
            claimed = connection.execute(
                delete(_hop)
                .where(or_(by_address, _hop.c.mac == mac), _hop.c.time >= since)
                .returning(_hop.c.time, _hop.c.kind, _hop.c.detail)
            ).all()
            note_many(
                connection,
                [
                    event_row(node_id, EventKind(kind), Actor.NODE, detail, time=time)
                    for time, kind, detail in claimed
                ],
            )

    @staticmethod
    def _place(
        connection: Connection, batch: _Pending
    ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """The batch's events and anonymous hops, with those known by a token or an
        address placed on their nodes' timelines, or with the anonymous ones. New lists:
        the batch is left as it was, to be written again should this transaction fail."""
        events, unknown = list(batch.events), list(batch.unknown)
        by_token: dict[str, uuid.UUID] = {}
        by_address: dict[str, uuid.UUID] = {}
        by_mac: dict[str, uuid.UUID] = {}
        if batch.by_token:
            wanted = {digest for digest, _, _ in batch.by_token}
            by_token = dict(
                connection.execute(
                    select(_deployment.c.token_hash, _deployment.c.node_id).where(
                        _deployment.c.token_hash.in_(wanted)
                    )
                ).all()
            )
        if batch.by_address:
            by_address = _owners_of(connection, {client for client, _ in batch.by_address})
        if batch.by_mac:
            wanted = {mac for mac, _, _ in batch.by_mac}
            by_mac = dict(
                connection.execute(
                    select(_nic.c.mac, _nic.c.node_id).where(_nic.c.mac.in_(wanted))
                ).all()
            )
        placed: list[tuple[uuid.UUID | None, str, str | None, dict[str, object]]] = [
            (by_token.get(key), client, None, event) for key, client, event in batch.by_token
        ]
        placed += [
            (by_address.get(client), client, None, event) for client, event in batch.by_address
        ]
        placed += [(by_mac.get(mac), client, mac, event) for mac, client, event in batch.by_mac]
        for node_id, client, mac, event in placed:
            if node_id is not None:
                events.append({**event, "node_id": node_id})
            else:
                unknown.append(
                    {
                        "time": event["time"],
                        "client": client,
                        "mac": mac,
                        "kind": str(event["kind"])[:16],
                        "detail": str(event["message"])[:500],
                    }
                )
        return events, unknown


def _unplaced(kind: EventKind, message: str) -> dict[str, Any]:
    """An event whose node is found when the batch is written."""
    return event_row(uuid.UUID(int=0), kind, Actor.NODE, message)


def _of_existing_nodes(
    connection: Connection, events: list[dict[str, object]]
) -> list[dict[str, object]]:
    """The events whose node still exists: a node deleted since its hop was recorded (by
    an operator, or pruned by discovery) drops its own hops, not the whole batch's."""
    if not events:
        return events
    wanted = {event["node_id"] for event in events}
    found = set(connection.execute(select(_node.c.id).where(_node.c.id.in_(wanted))).scalars())
    return [event for event in events if event["node_id"] in found]


def _owners_of(connection: Connection, addresses: set[str]) -> dict[str, uuid.UUID]:
    """The node each boot address belongs to (the NIC that booted from it last)."""
    rows = connection.execute(
        select(_nic.c.boot_ip, _nic.c.node_id).where(_nic.c.boot_ip.in_(addresses))
    )
    return dict(rows.all())


def latest_unknown(session: Session, limit: int) -> Sequence[BootHop]:
    """The latest hops no node could be found for, newest first."""
    return session.scalars(select(BootHop).order_by(_hop.c.id.desc()).limit(limit)).all()
