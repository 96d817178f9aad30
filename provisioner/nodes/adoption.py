"""Adoption: an enrollment (one node, or a rack manifest) that names the MAC of a
``discovered`` node makes that node the enrolled one instead of conflicting with it.

A machine that network-booted before anyone enrolled it became a ``discovered`` node
(provisioner/boot/service.py). Its timeline, its facts and the address it boots from
belong to the same machine the operator now enrolls, so the node keeps its id (and with
it everything recorded under the id) and takes the name, rack, role and BMC of the
request, moving to ``enrolled`` through :func:`provisioner.timeline.transition`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlmodel import Session, col

from provisioner import timeline
from provisioner.lifecycle import Outcome, State
from provisioner.models import Bmc, Nic, Node, table_of
from provisioner.schemas import NodeCreate

# Columns of a new node's row that an adopted node keeps as they are: its identity and
# history, the state and version the timeline moves on, and an operator's maintenance
# flag (orthogonal to the state: enrolling does not lift it).
_KEPT = frozenset(
    {"id", "state", "created_at", "updated_at", "version", "maintenance", "maintenance_reason"}
)
_bmc = table_of(Bmc)
_nic = table_of(Nic)


@dataclass(frozen=True)
class Plan:
    """Which discovered node each item adopts (by index in the items), and why a row
    cannot adopt (``{"row", "field", "message"}``, rows 1-based)."""

    adopted: dict[int, Node] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    named: frozenset[uuid.UUID] = frozenset()
    """Every discovered node the items name a MAC of: theirs to adopt, not a conflict."""


def plan(session: Session, items: Sequence[NodeCreate]) -> Plan:
    """Find the discovered nodes ``items`` name by MAC. A row cannot adopt when it names
    MACs of two discovered nodes, or a discovered node an earlier row adopts."""
    macs = {nic.mac for item in items for nic in item.nics}
    if not macs:
        return Plan()
    query = (
        select(col(Nic.mac), Node)
        .join(Node, col(Node.id) == col(Nic.node_id))
        .where(col(Nic.mac).in_(macs), col(Node.state) == State.DISCOVERED.value)
    )
    owners: dict[str, Node] = dict(session.execute(query).all())
    result = Plan(named=frozenset(node.id for node in owners.values()))
    first_row: dict[uuid.UUID, int] = {}
    for row, item in enumerate(items, start=1):
        found = {owners[n.mac].id: owners[n.mac] for n in item.nics if n.mac in owners}
        if len(found) > 1:
            names = ", ".join(sorted(repr(node.name) for node in found.values()))
            message = (
                f"the MACs belong to {len(found)} discovered nodes ({names}); one node "
                "adopts one: list only one machine's MACs, or delete the extra discovered "
                "nodes (DELETE /api/v1/nodes/NAME) and try again"
            )
            result.errors.append({"row": row, "field": "macs", "message": message})
            continue
        for node in found.values():
            first = first_row.setdefault(node.id, row)
            if first == row:
                result.adopted[row - 1] = node
            else:
                message = f"discovered node {node.name!r} is already adopted by row {first}"
                result.errors.append({"row": row, "field": "macs", "message": message})
    return result


def adopt(
    session: Session, node: Node, row: Mapping[str, Any], item: NodeCreate, actor: str, how: str
) -> list[dict[str, Any]]:
    """Make discovered ``node`` the node ``row`` describes (no commit). Its BMC is
    the caller's to insert; returns the NIC rows to insert for MACs it did not have.

    NICs it keeps keep their boot address, so the machine's next TFTP hops still find
    it. Raises :class:`provisioner.timeline.Stale` if the node changed since it was read.
    """
    changes = {key: value for key, value in row.items() if key not in _KEPT}
    message = f"adopted discovered node {node.name}: {how}"
    timeline.transition(session, node, Outcome.ENROLL, actor, message, changes=changes)
    connection = session.connection()
    connection.execute(delete(_bmc).where(_bmc.c.node_id == node.id))
    wanted = {nic.mac: nic.pxe for nic in item.nics}
    ours = _nic.c.node_id == node.id
    connection.execute(delete(_nic).where(ours, _nic.c.mac.not_in(wanted)))
    kept = set(connection.execute(select(_nic.c.mac).where(ours)).scalars())
    if kept:
        connection.execute(
            update(_nic)
            .where(ours, _nic.c.mac == bindparam("k_mac"))
            .values(pxe=bindparam("k_pxe")),
            [{"k_mac": mac, "k_pxe": wanted[mac]} for mac in kept],
        )
    return [
        {"node_id": node.id, "mac": mac, "pxe": pxe}
        for mac, pxe in wanted.items()
        if mac not in kept
    ]
