"""The checks enrollment and changes share: named roles and images exist; names, MACs,
BMCs and rack positions are a node's own. Errors are ``{"row", "field", "message"}`` (rows
1-based, as in a manifest); :func:`in_api_terms` restates them for one node of the API.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, true
from sqlmodel import Session, col, select

from provisioner.models import Bmc, Nic, Node, OsImage, Role
from provisioner.schemas import NodeCreate, NodePatch

# The port IPMI's RMCP+ listens on: BMCs on it are told apart by their addresses.
IPMI_PORT = 623


@functools.cache
def _names_statement(model: type[Role] | type[OsImage]) -> Any:
    key = col(model.name)
    return select(key).where(key.in_(bindparam("names", expanding=True)))


def _known(session: Session, model: type[Role] | type[OsImage], names: set[str]) -> set[str]:
    if not names:
        return set()
    # Core on the session's connection, one statement built once: every enrollment asks.
    rows = session.connection().execute(_names_statement(model), {"names": sorted(names)})
    return {name for (name,) in rows}


def reference_errors(
    session: Session, items: Sequence[NodeCreate | NodePatch]
) -> list[dict[str, Any]]:
    """Rows naming a role or image that does not exist."""
    roles = _known(session, Role, {i.role for i in items if i.role})
    images = _known(session, OsImage, {i.image for i in items if i.image})
    errors: list[dict[str, Any]] = []
    for row, item in enumerate(items, start=1):
        if item.role and item.role not in roles:
            errors.append(
                {
                    "row": row,
                    "field": "role",
                    "message": f"unknown role {item.role!r}; create it first (POST /api/v1/roles)",
                }
            )
        if item.image and item.image not in images:
            errors.append(
                {
                    "row": row,
                    "field": "image",
                    "message": f"unknown image {item.image!r}; see GET /api/v1/images",
                }
            )
    return errors


@dataclass(frozen=True)
class Claim:
    """What a new or changed node wants for itself alone: a name, MACs, a rack position,
    a BMC (address, port) and the field a conflict over it is reported on."""

    name: str | None = None
    macs: tuple[str, ...] = ()
    position: tuple[str, int] | None = None
    bmc: tuple[str, int] | None = None
    bmc_field: str = "bmc_address"

    @classmethod
    def of(cls, item: NodeCreate) -> Claim:
        macs = tuple(n.mac for n in item.nics)
        position = rack_position(item.rack, item.rack_unit)
        bmc = item.bmc
        port_given = "port" in bmc.model_fields_set
        # No port only for driver auto before its probe, which is never stored.
        port = bmc.port if bmc.port is not None else IPMI_PORT
        return cls(item.name, macs, position, *bmc_claim(bmc.address, port, port_given))


def bmc_claim(address: str, port: int, port_given: bool) -> tuple[tuple[str, int], str]:
    """A new BMC's (address, port), and the field that tells it apart: the port, when
    it is given and not IPMI's own (several BMCs behind one address, as in the lab),
    else the address."""
    own_port = port_given and port != IPMI_PORT
    return (address, port), "bmc_port" if own_port else "bmc_address"


def rack_position(rack: str | None, unit: int | None) -> tuple[str, int] | None:
    """A rack position, if both its rack and its unit are known."""
    return (rack, unit) if rack is not None and unit is not None else None


def conflict_errors(
    session: Session, claims: Sequence[Claim], exclude: Collection[uuid.UUID] = ()
) -> list[dict[str, Any]]:
    """Rows (1-based) whose name, MACs, rack position or BMC belong to a node not in
    ``exclude`` (the node being changed, or the discovered nodes being adopted), or
    whose BMC an earlier row claims too."""
    others = col(Node.id).not_in(exclude) if exclude else true()
    names = {c.name for c in claims if c.name}
    taken_names: set[str] = set()
    if names:
        taken_names = set(session.exec(select(Node.name).where(col(Node.name).in_(names), others)))
    macs = {mac for c in claims for mac in c.macs}
    owners: dict[str, str] = {}
    if macs:
        query = select(Nic.mac, Node.name).join(Node, col(Node.id) == col(Nic.node_id))
        owners = dict(session.exec(query.where(col(Nic.mac).in_(macs), others)).all())
    racks = {c.position[0] for c in claims if c.position}
    occupants: dict[tuple[str, int], str] = {}
    if racks:
        query3 = select(Node.rack, Node.rack_unit, Node.name).where(
            col(Node.rack).in_(racks), others
        )
        occupants = {
            (r, u): n for r, u, n in session.exec(query3) if r is not None and u is not None
        }
    bmc_users = _bmc_users(session, {c.bmc for c in claims if c.bmc}, others)
    bmc_rows: dict[tuple[str, int], int] = {}
    errors: list[dict[str, Any]] = []
    for row, claim in enumerate(claims, start=1):
        if claim.name in taken_names:
            errors.append(
                {"row": row, "field": "name", "message": f"a node named {claim.name!r} exists"}
            )
        for mac in claim.macs:
            if mac in owners:
                message = f"MAC {mac} belongs to node {owners[mac]!r}"
                errors.append({"row": row, "field": "macs", "message": message})
        if claim.position in occupants:
            rack, unit = claim.position
            message = f"rack {rack} U{unit} holds node {occupants[claim.position]!r}"
            errors.append({"row": row, "field": "u", "message": message})
        if claim.bmc is None:
            continue
        address, port = claim.bmc
        first = bmc_rows.setdefault(claim.bmc, row)
        if claim.bmc in bmc_users:
            message = f"BMC {address} port {port} belongs to node {bmc_users[claim.bmc]!r}"
            errors.append({"row": row, "field": claim.bmc_field, "message": message})
        elif first != row:
            message = f"BMC {address} port {port} is already listed on row {first}"
            errors.append({"row": row, "field": claim.bmc_field, "message": message})
    return errors


def _bmc_users(session: Session, bmcs: set[tuple[str, int]], others: Any) -> dict[Any, str]:
    """The nodes (among ``others``) that use each of ``bmcs``, by (address, port)."""
    if not bmcs:
        return {}
    addresses = {address for address, _ in bmcs}
    query = (
        select(Bmc.address, Bmc.port, Node.name)
        .join(Node, col(Node.id) == col(Bmc.node_id))
        .where(col(Bmc.address).in_(addresses), others)
    )
    return {(a, p): n for a, p, n in session.exec(query) if (a, p) in bmcs}


_API_NAMES = {
    "macs": "nics",
    "u": "rack_unit",
    "bmc_address": "bmc.address",
    "bmc_port": "bmc.port",
}


def in_api_terms(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors about one node in the API's terms: no row number, request field names."""
    return [
        {"field": _API_NAMES.get(e["field"], e["field"]), "message": e["message"]} for e in errors
    ]
