"""Reading nodes: lookup, the API's views of them (one, a page, rows just written),
their timelines and counts.

Listing pages is the hottest path of the API: a page is read as plain rows, by
statements built once per combination of filters.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, cast

from sqlalchemy import Row, bindparam, func, literal_column
from sqlmodel import Session, col, select

from provisioner import inspection
from provisioner.errors import Problem
from provisioner.lifecycle import State, allowed_actions
from provisioner.models import Bmc, DiskWipe, Event, InventoryFact, Nic, Node
from provisioner.schemas import BmcOut, EventOut, InventoryOut, NodeOut, WipeOut
from provisioner.secrets import Vault

MAX_EVENTS = 1000


def find(session: Session, ident: str) -> Node:
    """A node by id or by name; 404 otherwise."""
    try:
        node = session.get(Node, uuid.UUID(ident))
    except ValueError:
        node = session.exec(select(Node).where(Node.name == ident.lower())).first()
    if node is None:
        raise Problem(404, f"No node has the id or name {ident!r}.")
    return node


# What a node view shows of each table; everything else (leases, counters) is internal.
_NODE_FIELDS = tuple(f for f in NodeOut.model_fields if f not in ("bmc", "nics", "allowed_actions"))
_BMC_FIELDS = tuple(BmcOut.model_fields)
_BMC_COLUMNS = [col(Bmc.node_id), *(getattr(Bmc, f) for f in _BMC_FIELDS)]


class _Nic(NamedTuple):
    mac: str
    pxe: bool


class _Bmc(NamedTuple):
    driver: str
    address: str
    port: int
    username: str
    timeout: float | None
    retries: int | None
    cipher_suite: int | None
    tls_verify: bool | None
    tls_fingerprint: str | None


@functools.cache
def _allowed(state: str, maintenance: bool, failed_from: str | None) -> list[str]:
    return allowed_actions(
        State(state),
        maintenance=maintenance,
        failed_from=State(failed_from) if failed_from else None,
    )


def _view(node: Mapping[str, Any], bmc: Any | None, nics: Sequence[Any]) -> dict[str, Any]:
    view = {f: node[f] for f in _NODE_FIELDS}
    view["bmc"] = {f: getattr(bmc, f) for f in _BMC_FIELDS} if bmc is not None else None
    view["nics"] = [{"mac": n.mac, "pxe": n.pxe} for n in nics]
    view["allowed_actions"] = _allowed(node["state"], node["maintenance"], node["failed_from"])
    return view


def _mapping(node: Node | Row[Any]) -> Mapping[str, Any]:
    if isinstance(node, Node):
        return {f: getattr(node, f) for f in _NODE_FIELDS}
    return cast(Mapping[str, Any], node._mapping)


def present(session: Session, nodes: Sequence[Node | Row[Any]]) -> list[dict[str, Any]]:
    """API views of ``nodes`` (NodeOut-shaped dicts), their BMCs and NICs read in two
    queries of plain rows: listing pages is the hottest path of the API."""
    if not nodes:
        return []
    ids = [n.id for n in nodes]
    bmcs = {
        r.node_id: r
        for r in session.execute(select(*_BMC_COLUMNS).where(col(Bmc.node_id).in_(ids)))
    }
    nics: dict[uuid.UUID, list[Any]] = defaultdict(list)
    nic_rows = session.execute(
        select(Nic.node_id, Nic.mac, Nic.pxe).where(col(Nic.node_id).in_(ids)).order_by(col(Nic.id))
    )
    for nic in nic_rows:
        nics[nic.node_id].append(nic)
    return [_view(_mapping(n), bmcs.get(n.id), nics[n.id]) for n in nodes]


# What a cursor's plaintext starts with: nothing else the vault encrypts (BMC passwords,
# webhook secrets) can pass for a cursor.
_AFTER = "page after "


def _encode_cursor(vault: Vault, name: str) -> str:
    """Opaque and tamper-evident: the last name of the page, encrypted and authenticated
    with the service's secret key, so a client can neither read nor forge a position."""
    return vault.encrypt(_AFTER + name)


def _decode_cursor(vault: Vault, cursor: str) -> str:
    try:
        plain = vault.decrypt(cursor)
    except ValueError:
        plain = ""
    if not plain.startswith(_AFTER):
        raise Problem(400, "The cursor is not one this service handed out: list again without one.")
    return plain.removeprefix(_AFTER)


# A page is two statements built once per combination of filters (SQLAlchemy then skips
# composing and cache-keying them on every request): the nodes with their BMC columns
# joined, then the NICs of the nodes in the page's name range.
_VIEW_COLUMNS = [
    *(getattr(Node, f) for f in _NODE_FIELDS),
    *(getattr(Bmc, f) for f in _BMC_FIELDS),
]
_N = len(_NODE_FIELDS)
_STATE, _MAINTENANCE, _FAILED_FROM, _NAME = (
    _NODE_FIELDS.index(f) for f in ("state", "maintenance", "failed_from", "name")
)
_DRIVER = _N + _BMC_FIELDS.index("driver")  # NOT NULL: None means the node has no BMC
# The string filters by selectivity: a page uses the index of the first one given, on
# (column, name), and reads the others off the rows. Without table statistics, SQLite
# would as soon walk all nodes of a state in name order as the hundred of one rack.
_INDEXED = ("rack", "role", "state")


def _filters(shape: frozenset[str], *, lead: bool) -> list[Any]:
    """WHERE terms for the filters in ``shape``; only the ``lead`` one may use an index
    (``x || ''`` hides a column from the planner on SQLite and PostgreSQL alike)."""
    first = "mac" if "mac" in shape or not lead else next((f for f in _INDEXED if f in shape), "")
    terms: list[Any] = []
    for name in _INDEXED:
        if name in shape:
            column = getattr(Node, name)
            key = column if name == first else column.op("||")(literal_column("''"))
            terms.append(key == bindparam(name))
    if "maintenance" in shape:
        terms.append(col(Node.maintenance) == bindparam("maintenance"))
    return terms


@functools.cache
def _page_statements(shape: frozenset[str]) -> tuple[Any, Any]:
    nodes = (
        select(*_VIEW_COLUMNS)
        .outerjoin(Bmc, col(Bmc.node_id) == col(Node.id))
        .where(*_filters(shape, lead=True))
        .order_by(col(Node.name))
        .limit(bindparam("limit"))
    )
    if "cursor" in shape:
        nodes = nodes.where(col(Node.name) > bindparam("cursor"))
    if "mac" in shape:
        nodes = nodes.join(Nic, col(Nic.node_id) == col(Node.id)).where(
            col(Nic.mac) == bindparam("mac")
        )
    nics = (
        select(Node.name, Nic.mac, Nic.pxe)
        .join(Node, col(Node.id) == col(Nic.node_id))
        .where(
            *_filters(shape - {"mac"}, lead=False),
            col(Node.name) >= bindparam("first"),
            col(Node.name) <= bindparam("last"),
        )
        .order_by(col(Nic.id))
    )
    return nodes, nics


@dataclass(frozen=True)
class NodeFilter:
    """What a listing keeps; None keeps any."""

    state: str | None = None
    role: str | None = None
    rack: str | None = None
    mac: str | None = None
    maintenance: bool | None = None


def page(
    session: Session, vault: Vault, where: NodeFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of node views ordered by name, and the cursor of the next page."""
    given = {"cursor": _decode_cursor(vault, cursor) if cursor else None, **asdict(where)}
    params = {k: v for k, v in given.items() if v is not None and v != ""}
    nodes_statement, nics_statement = _page_statements(frozenset(params))
    connection = session.connection()
    rows = connection.execute(nodes_statement, {**params, "limit": limit + 1}).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(vault, rows[-1][_NAME])
    if not rows:
        return [], None
    params.pop("cursor", None)
    params.pop("mac", None)
    params.update(first=rows[0][_NAME], last=rows[-1][_NAME])
    nics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, nic_mac, pxe in connection.execute(nics_statement, params):
        nics[name].append({"mac": nic_mac, "pxe": pxe})
    return [_row_view(row, nics[row[_NAME]]) for row in rows], next_cursor


def _row_view(row: Row[Any], nics: list[dict[str, Any]]) -> dict[str, Any]:
    view = dict(zip(_NODE_FIELDS, row, strict=False))
    has_bmc = row[_DRIVER] is not None
    view["bmc"] = dict(zip(_BMC_FIELDS, row[_N:], strict=True)) if has_bmc else None
    view["nics"] = nics
    view["allowed_actions"] = _allowed(row[_STATE], row[_MAINTENANCE], row[_FAILED_FROM])
    return view


def events(session: Session, node: Node) -> list[EventOut]:
    rows = session.exec(
        select(Event)
        .where(Event.node_id == node.id)
        # By time first: boot hops are written in batches, a fraction of a second late.
        .order_by(col(Event.time), col(Event.id))
        .limit(MAX_EVENTS)
    )
    return [EventOut.model_validate(e) for e in rows]


def wipes(session: Session, node: Node) -> list[WipeOut]:
    """The evidence of the node's disk wipes, newest first."""
    rows = session.exec(
        select(DiskWipe)
        .where(DiskWipe.node_id == node.id)
        .order_by(col(DiskWipe.id).desc())
        .limit(MAX_EVENTS)
    )
    return [WipeOut.model_validate(row) for row in rows]


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.exec(select(Node.state, func.count()).group_by(Node.state))
    return dict(rows.all())


def last_inspection(session: Session, node: Node) -> InventoryOut:
    """What the node's inspections found: the BMC's facts, completed by the deploy
    agent's when it ran (under ``in_band``); 404 before the first."""
    newest = session.exec(
        select(InventoryFact)
        .where(InventoryFact.node_id == node.id)
        .order_by(col(InventoryFact.id).desc())
    ).first()
    if newest is None:
        raise Problem(404, f"Node {node.name} has not been inspected yet; run the inspect action.")
    sources = session.exec(
        select(InventoryFact.source).where(InventoryFact.node_id == node.id).distinct()
    ).all()
    return InventoryOut(
        source="+".join(sorted(sources, key=lambda source: source != inspection.OUT_OF_BAND)),
        collected_at=newest.collected_at,
        hardware_profile=node.hardware_profile,
        facts=inspection.kept(session, node.id),
    )


def present_written(
    node_rows: Sequence[Mapping[str, Any]],
    bmc_rows: Sequence[Mapping[str, Any]],
    nic_rows: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """API views of nodes from the rows just inserted for them, without reading them
    back: enrollment answers with these."""
    nics_by_node: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for nic in nic_rows:
        nics_by_node[nic["node_id"]].append(_Nic(nic["mac"], nic["pxe"]))
    return [
        _view(node, _Bmc(**{f: bmc[f] for f in _BMC_FIELDS}), nics_by_node[node["id"]])
        for node, bmc in zip(node_rows, bmc_rows, strict=True)
    ]
