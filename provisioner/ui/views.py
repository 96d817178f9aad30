"""What the web view's pages show, read from the database: the racks (every node in its
slot), one node with its timeline, and the machines that booted unknown.

Read-only: actions and enrollment go through the node services (provisioner/nodes/),
never through here.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, cast, func, or_
from sqlalchemy import select as select_rows
from sqlmodel import Session, col, select

from provisioner import inspection
from provisioner.boot import hops
from provisioner.lifecycle import State, allowed_actions
from provisioner.models import (
    Bmc,
    BootHop,
    Deployment,
    Event,
    InventoryFact,
    Nic,
    Node,
    OsImage,
    Role,
)
from provisioner.profiles import Profile, ProfileSet

# A rack is drawn at least this tall: the common full-height rack.
RACK_UNITS = 42
# Timeline entries a node's page shows, newest kept.
TIMELINE = 500
STATES = [s.value for s in State]
# Event kinds that are a machine's own steps along the boot chain and the hand-off.
_HOP_PREFIXES = ("boot-", "tftp-", "http-", "callback-", "agent", "handoff", "handed-off")
_HOP_KINDS = frozenset({"autosign", "deployed", "wiped", "inspected"})


@dataclass(frozen=True)
class Card:
    """One node as the racks view shows it."""

    name: str
    state: str
    power_state: str
    role: str | None
    rack: str | None
    rack_unit: int | None
    maintenance: bool


@dataclass
class Rack:
    name: str
    units: int
    slots: dict[int, Card] = field(default_factory=dict)
    unplaced: list[Card] = field(default_factory=list)

    def rows(self) -> list[Slots]:
        """Slots from the top unit down, as a rack is labelled; each run of empty units
        is one row, so that a rack's few machines show without scrolling past 40 empty
        slots."""
        rows: list[Slots] = []
        for unit in range(self.units, 0, -1):
            card = self.slots.get(unit)
            if card is None and rows and rows[-1].card is None:
                rows[-1].bottom = unit
            else:
                rows.append(Slots(unit, unit, card))
        return rows


@dataclass
class Slots:
    """One node's slot (``top == bottom``), or a run of empty units."""

    top: int
    bottom: int
    card: Card | None


@dataclass(frozen=True)
class Filters:
    state: str = ""
    role: str = ""
    rack: str = ""
    q: str = ""

    @classmethod
    def of(cls, params: dict[str, str]) -> Filters:
        def clean(name: str) -> str:
            return params.get(name, "").strip().lower()[:80]

        state = clean("state")
        return cls(state if state in STATES else "", clean("role"), clean("rack"), clean("q"))

    @property
    def any(self) -> bool:
        return bool(self.state or self.role or self.rack or self.q)


@dataclass
class RacksView:
    racks: list[Rack]
    unracked: list[Card]
    counts: dict[str, int]
    total: int
    roles: list[str]
    rack_names: list[str]


_CARD = [
    col(c)
    for c in (
        Node.name,
        Node.state,
        Node.power_state,
        Node.role,
        Node.rack,
        Node.rack_unit,
        Node.maintenance,
    )
]


def racks(session: Session, filters: Filters) -> RacksView:
    """Every node matching ``filters``, in its rack's slot or in the unracked list."""
    query = select_rows(*_CARD).order_by(col(Node.name))
    for name in ("state", "role", "rack"):
        if value := getattr(filters, name):
            query = query.where(getattr(Node, name) == value)
    if filters.q:
        query = query.where(col(Node.id).in_(_search(session, filters.q)))
    cards = [Card(*row) for row in session.execute(query)]
    by_rack: dict[str, Rack] = {}
    unracked = []
    for card in cards:
        if card.rack is None:
            unracked.append(card)
            continue
        rack = by_rack.setdefault(card.rack, Rack(card.rack, RACK_UNITS))
        if card.rack_unit is None:
            rack.unplaced.append(card)
        else:
            rack.slots[card.rack_unit] = card
            rack.units = max(rack.units, card.rack_unit)
    counts = Counter(card.state for card in cards)
    roles = session.execute(select(Node.role).where(col(Node.role).is_not(None)).distinct())
    names = session.execute(select(Node.rack).where(col(Node.rack).is_not(None)).distinct())
    return RacksView(
        racks=[by_rack[name] for name in sorted(by_rack)],
        unracked=unracked,
        counts={state: counts[state] for state in STATES},
        total=len(cards),
        roles=sorted(r for (r,) in roles),
        rack_names=sorted(r for (r,) in names),
    )


def _search(session: Session, text: str) -> list[uuid.UUID]:
    """Nodes whose name, a MAC or the serial number contains ``text``."""
    like = f"%{text.replace('-', ':') if _macish(text) else text}%"
    by_name_or_mac = select(Node.id).where(
        or_(
            col(Node.name).like(f"%{text}%"),
            col(Node.id).in_(select(Nic.node_id).where(col(Nic.mac).like(like))),
        )
    )
    found = set(session.execute(by_name_or_mac).scalars())
    # Serials live in the inspection's facts (JSON): the database narrows, Python decides.
    facts = select(InventoryFact.node_id, InventoryFact.facts).where(
        func.lower(cast(InventoryFact.facts, String)).like(f"%{text}%")
    )
    for node_id, found_facts in session.execute(facts):
        serials = (found_facts.get("serial"), found_facts.get("board_serial"))
        if any(text in str(s).lower() for s in serials if s):
            found.add(node_id)
    return list(found)


def _macish(text: str) -> bool:
    return all(c in "0123456789abcdef:-" for c in text)


@dataclass(frozen=True)
class TimelineEntry:
    id: int
    time: datetime
    since_previous: float | None
    actor: str
    kind: str
    from_state: str | None
    to_state: str | None
    message: str
    hop: bool


def utc(when: datetime) -> datetime:
    """``when`` with its time zone: SQLite hands back naive datetimes, stored in UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def is_hop(kind: str) -> bool:
    return kind.startswith(_HOP_PREFIXES) or kind in _HOP_KINDS


@dataclass
class NodeView:
    node: Node
    bmc: dict[str, Any] | None
    nics: list[Nic]
    facts: dict[str, Any]
    deployment: Deployment | None
    timeline: list[TimelineEntry]
    actions: list[str]
    roles: list[str]
    images: list[str]
    profile: Profile | None


def node_view(session: Session, node: Node, profiles: ProfileSet) -> NodeView:
    bmc = session.get(Bmc, node.id)
    shown_bmc = None
    if bmc is not None:
        # Everything but the password, which is never shown in any form.
        shown_bmc = {
            "driver": bmc.driver,
            "address": bmc.address,
            "port": bmc.port,
            "username": bmc.username,
            "tls_verify": bmc.tls_verify,
            "tls_fingerprint": bmc.tls_fingerprint,
        }
    nics = session.exec(select(Nic).where(Nic.node_id == node.id).order_by(col(Nic.id))).all()
    deployment = session.exec(
        select(Deployment)
        .where(Deployment.node_id == node.id)
        .order_by(col(Deployment.created_at).desc())
    ).first()
    failed_from = State(node.failed_from) if node.failed_from else None
    return NodeView(
        node=node,
        bmc=shown_bmc,
        nics=list(nics),
        facts=inspection.kept(session, node.id),
        deployment=deployment,
        timeline=timeline(session, node.id),
        actions=allowed_actions(
            State(node.state), maintenance=node.maintenance, failed_from=failed_from
        ),
        roles=list(session.exec(select(Role.name).order_by(col(Role.name)))),
        images=list(session.exec(select(OsImage.name).order_by(col(OsImage.name)))),
        profile=profiles.get(node.hardware_profile) if node.hardware_profile else None,
    )


def timeline(session: Session, node_id: uuid.UUID) -> list[TimelineEntry]:
    """The node's newest events, oldest first, each with the seconds since the one before."""
    rows = session.exec(
        select(Event)
        .where(Event.node_id == node_id)
        .order_by(col(Event.time).desc(), col(Event.id).desc())
        .limit(TIMELINE)
    ).all()
    entries = []
    previous: datetime | None = None
    for event in reversed(rows):
        when = utc(event.time)
        since = (when - previous).total_seconds() if previous is not None else None
        previous = when
        entries.append(
            TimelineEntry(
                event.id or 0,
                when,
                since,
                event.actor,
                event.kind,
                event.from_state,
                event.to_state,
                event.message,
                is_hop(event.kind),
            )
        )
    return entries


@dataclass(frozen=True)
class Discovered:
    name: str
    macs: list[str]
    first_seen: datetime
    hops: int
    last_message: str
    facts: dict[str, Any]


def discovered(session: Session) -> list[Discovered]:
    """Machines that network-booted with a MAC no node had, newest first."""
    found = session.exec(
        select(Node)
        .where(Node.state == State.DISCOVERED.value)
        .order_by(col(Node.created_at).desc())
    ).all()
    ids = [n.id for n in found]
    macs: dict[uuid.UUID, list[str]] = defaultdict(list)
    for node_id, mac in session.execute(
        select(Nic.node_id, Nic.mac).where(col(Nic.node_id).in_(ids))
    ):
        macs[node_id].append(mac)
    counts: dict[uuid.UUID, tuple[int, int]] = {
        node_id: (count, newest)
        for node_id, count, newest in session.execute(
            select_rows(col(Event.node_id), func.count(), func.max(Event.id))
            .where(col(Event.node_id).in_(ids))
            .group_by(col(Event.node_id))
        )
    }
    newest = [newest for _, newest in counts.values()]
    last: dict[uuid.UUID, str] = dict(
        session.execute(
            select_rows(col(Event.node_id), col(Event.message)).where(col(Event.id).in_(newest))
        ).all()
    )
    reported = set(
        session.exec(select(InventoryFact.node_id).where(col(InventoryFact.node_id).in_(ids)))
    )
    return [
        Discovered(
            node.name,
            macs[node.id],
            utc(node.created_at),
            counts.get(node.id, (0, 0))[0],
            last.get(node.id, ""),
            inspection.kept(session, node.id) if node.id in reported else {},
        )
        for node in found
    ]


def unknown_hops(session: Session, limit: int = 20) -> list[BootHop]:
    """Boot requests no node could be found for (not even a MAC to record)."""
    return list(hops.latest_unknown(session, limit))
