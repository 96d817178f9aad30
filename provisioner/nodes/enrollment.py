"""Enrollment: nodes from the API (one) or a rack manifest (many), each with its BMC,
NICs and first event, in one transaction: all or none. A node whose MAC belongs to a
``discovered`` node adopts that node (:mod:`provisioner.nodes.adoption`).

Enrollment is the API's hottest write: rows go in through Core inserts built once, and
the checks (and the search for discovered nodes to adopt) ride on the inserts or run
only after one fails.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from provisioner import timeline
from provisioner.errors import Problem
from provisioner.lifecycle import Outcome, State
from provisioner.models import Bmc, Nic, Node, OsImage, Role, table_of, utcnow
from provisioner.nodes import adoption
from provisioner.nodes.checks import Claim, conflict_errors, in_api_terms, reference_errors
from provisioner.nodes.queries import present, present_written
from provisioner.schema_types import AUTO_DRIVER
from provisioner.schemas import NodeCreate
from provisioner.secrets import Vault
from provisioner.timeline import EventKind

log = logging.getLogger(__name__)

_UNKNOWN = "Some nodes name a role or image that does not exist."
_TAKEN = "Some names, MACs, BMCs or rack positions are taken."
_ONE_EACH = (
    "A node adopts at most one discovered node, and a discovered node is adopted by one "
    "node; nothing was enrolled."
)


@dataclass(frozen=True)
class Enrolled:
    """The API views of the enrolled nodes in the order asked, and how many of them
    adopted a discovered node instead of being created."""

    nodes: list[dict[str, Any]]
    adopted: int


@functools.cache
def _insert(model: type[SQLModel]) -> Any:
    """One INSERT statement per table, built once (SQLAlchemy keys its cache on it)."""
    return table_of(model).insert()


@functools.cache
def _insert_if_known(keys: tuple[str, ...]) -> Any:
    """``INSERT INTO node (keys) SELECT :key, ... WHERE`` the node's role and image (if it
    names them) exist: the check rides on the insert instead of costing a query of its
    own, and a role deleted meanwhile cannot slip in. No row inserted means unknown."""
    table = table_of(Node)
    values = {k: bindparam(k, type_=table.c[k].type) for k in keys}
    role, image = values["role"], values["image"]
    known = and_(
        or_(role.is_(None), exists().where(col(Role.name) == role)),
        or_(image.is_(None), exists().where(col(OsImage.name) == image)),
    )
    rows = select(*values.values()).where(known)
    insert = table.insert().from_select([table.c[k] for k in keys], rows, include_defaults=False)
    # SQLAlchemy keeps the row count of INSERTs only when asked (psycopg's is -1 otherwise).
    return insert.execution_options(preserve_rowcount=True)


@dataclass
class _Rows:
    """The rows that enroll nodes: each node's row, its BMC, its NICs and first event."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    bmcs: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _rows(
    vault: Vault,
    items: Sequence[NodeCreate],
    ids: Sequence[uuid.UUID],
    actor: str,
    how: str,
    inspect: bool,
    notes: Mapping[int, str],
) -> _Rows:
    now = utcnow()
    rows = _Rows()
    for index, (item, node_id) in enumerate(zip(items, ids, strict=True)):
        if item.bmc.driver == AUTO_DRIVER or item.bmc.port is None:
            # Never stored: find_auto_drivers replaces it with what answered.
            raise Problem(422, f"Node {item.name}: BMC driver auto was not probed.")
        if item.bmc.tls_verify is False:
            log.warning(
                "node %s: the certificate of BMC %s:%s will not be checked (tls_verify false)",
                item.name,
                item.bmc.address,
                item.bmc.port,
            )
        rows.nodes.append(
            {
                "id": node_id,
                "name": item.name,
                "rack": item.rack,
                "rack_unit": item.rack_unit,
                "role": item.role,
                "hardware_profile": item.hardware_profile,
                "image": item.image,
                "state": State.ENROLLED.value,
                "failed_from": None,
                "power_state": "unknown",
                "target_power": None,
                "power_reason": None,
                "power_checked_at": None,
                "maintenance": False,
                "maintenance_reason": None,
                "last_error": None,
                "auto_inspect": inspect,
                # The racking flow: once inspected, a node with a role (from the manifest
                # or the role rules) goes on to be provisioned.
                "auto_provision": inspect,
                "wake_at": None,
                "power_failures": 0,
                "created_at": now,
                "updated_at": now,
                "version": 1,
            }
        )
        rows.bmcs.append(
            {
                "node_id": node_id,
                "driver": item.bmc.driver,
                "address": item.bmc.address,
                "port": item.bmc.port,
                "username": item.bmc.username,
                "password_encrypted": vault.encrypt(item.bmc.password.get_secret_value()),
                "timeout": item.bmc.timeout,
                "retries": item.bmc.retries,
                "cipher_suite": item.bmc.cipher_suite,
                "tls_verify": item.bmc.tls_verify,
                "tls_fingerprint": None,
            }
        )
        rows.nics.extend({"node_id": node_id, "mac": n.mac, "pxe": n.pxe} for n in item.nics)
        rows.events.append(
            timeline.event_row(node_id, Outcome.ENROLL, actor, how, to_state=State.ENROLLED)
        )
        if index in notes:
            rows.events.append(timeline.event_row(node_id, EventKind.UPDATE, actor, notes[index]))
    return rows


def enroll(
    session: Session,
    vault: Vault,
    items: Sequence[NodeCreate],
    actor: str,
    how: str,
    *,
    inspect: bool = False,
    notes: Mapping[int, str] | None = None,
) -> Enrolled:
    """Enroll ``items`` in one transaction: all or none. A node whose MACs belong to a
    ``discovered`` node adopts it (see :mod:`provisioner.nodes.adoption`); the others
    are created.

    Raises :class:`Problem` 422 for unknown roles/images and 409 for names, MACs, BMCs
    or rack positions in use (or a BMC two rows share), with ``errors`` naming each row
    (1-based). With ``inspect``, the reconciler inspects
    each node once on its own. ``notes`` go on the timelines of created nodes, by index
    (what :func:`find_auto_drivers` found).
    """
    notes = notes or {}
    # One node's role and image are checked by its INSERT (see _insert_if_known).
    single = len(items) == 1
    if not single and (errors := reference_errors(session, items)):
        raise Problem(422, _UNKNOWN, errors=errors)
    rows = _rows(vault, items, [uuid.uuid4() for _ in items], actor, how, inspect, notes)
    try:
        # Core inserts on the session's connection: the ORM's bulk path costs several
        # times more Python per row, and enrollment is the API's hottest write.
        connection = session.connection()
        if single:
            (row,) = rows.nodes
            if connection.execute(_insert_if_known(tuple(row)), row).rowcount != 1:
                errors = reference_errors(session, items)
                session.rollback()
                if not errors:  # created between the two statements
                    raise Problem(409, "A role or image changed meanwhile; try again.")
                raise Problem(422, _UNKNOWN, errors=errors)
        else:
            connection.execute(_insert(Node), rows.nodes)
        _insert_rest(connection, rows.bmcs, rows.nics, rows.events)
        session.commit()
    except IntegrityError:
        # The unique constraints are the check; asking first would cost every enrollment
        # three queries to help only the ones that fail (or adopt, which is rarer).
        session.rollback()
        return _enroll_adopting(session, vault, items, actor, how, inspect, notes)
    return Enrolled(present_written(rows.nodes, rows.bmcs, rows.nics), adopted=0)


def _enroll_adopting(
    session: Session,
    vault: Vault,
    items: Sequence[NodeCreate],
    actor: str,
    how: str,
    inspect: bool,
    notes: Mapping[int, str],
) -> Enrolled:
    """Enroll ``items`` whose names, MACs, BMCs or positions are in use: the MACs of
    discovered nodes are adopted with them; anything else in use is a 409 naming every
    row."""
    found = adoption.plan(session, items)
    adopted = found.adopted
    claims = [Claim.of(i) for i in items]
    errors = found.errors + conflict_errors(session, claims, exclude=found.named)
    if found.errors:
        errors.sort(key=lambda error: int(error["row"]))
        raise Problem(409, _ONE_EACH, errors=errors)
    if errors or not adopted:
        raise Problem(409, _TAKEN, errors=errors)
    # The single fast path checked its role and image in an INSERT this path does not run.
    if errors := reference_errors(session, items):
        raise Problem(422, _UNKNOWN, errors=errors)
    node_ids = [adopted[i].id if i in adopted else uuid.uuid4() for i in range(len(items))]
    rows = _rows(vault, items, node_ids, actor, how, inspect, notes)
    created = [i for i in range(len(items)) if i not in adopted]
    try:
        nics = [
            nic
            for i, node in adopted.items()
            for nic in adoption.adopt(session, node, rows.nodes[i], items[i], actor, how)
        ]
        connection = session.connection()
        if created:
            connection.execute(_insert(Node), [rows.nodes[i] for i in created])
        new_ids = {node_ids[i] for i in created}
        nics += [nic for nic in rows.nics if nic["node_id"] in new_ids]
        events = [event for event in rows.events if event["node_id"] in new_ids]
        # An adopted node's enrollment is its adoption's event; what a probe found is
        # news on its timeline all the same.
        events += [
            timeline.event_row(node_ids[i], EventKind.UPDATE, actor, notes[i])
            for i in adopted
            if i in notes
        ]
        _insert_rest(connection, rows.bmcs, nics, events)
        session.commit()
    except timeline.Stale:
        session.rollback()
        raise Problem(409, "A discovered node changed while this request ran; try again.") from None
    except IntegrityError:
        # Another request took a name, MAC, BMC or position since the check above.
        session.rollback()
        errors = conflict_errors(session, claims, exclude=found.named)
        raise Problem(409, _TAKEN, errors=errors) from None
    return Enrolled(_views(session, rows, adopted), adopted=len(adopted))


def _views(session: Session, rows: _Rows, adopted: dict[int, Node]) -> list[dict[str, Any]]:
    """API views of the enrolled nodes in the order of the request: adopted nodes read
    back (they keep what they had), created ones from the rows just written."""
    query = select(Node).where(col(Node.id).in_([node.id for node in adopted.values()]))
    fresh = session.exec(query.execution_options(populate_existing=True)).all()
    views = {view["id"]: view for view in present(session, fresh)}
    created = [i for i in range(len(rows.nodes)) if i not in adopted]
    written = present_written(
        [rows.nodes[i] for i in created], [rows.bmcs[i] for i in created], rows.nics
    )
    views.update((view["id"], view) for view in written)
    return [views[row["id"]] for row in rows.nodes]


def _insert_rest(
    connection: Connection,
    bmcs: list[dict[str, Any]],
    nics: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> None:
    connection.execute(_insert(Bmc), bmcs)
    if nics:
        connection.execute(_insert(Nic), nics)
    timeline.note_many(connection, events)


def enroll_one(
    session: Session,
    vault: Vault,
    item: NodeCreate,
    actor: str,
    *,
    inspect: bool = False,
    note: str | None = None,
) -> dict[str, Any]:
    try:
        enrolled = enroll(
            session,
            vault,
            [item],
            actor,
            "enrolled through the API",
            inspect=inspect,
            notes={0: note} if note else None,
        )
    except Problem as problem:
        problem.extra["errors"] = in_api_terms(problem.extra.get("errors", []))
        raise
    (node,) = enrolled.nodes
    return node
