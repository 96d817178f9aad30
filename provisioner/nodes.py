"""Node inventory: enrollment (one node or a whole manifest), lookup, listing, changes,
lifecycle actions and the event timeline.

Every change to a node row goes through :func:`_save`, which bumps ``version`` only if
nobody else changed the row since it was read: concurrent writers cannot lose updates.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Row,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    or_,
    true,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from provisioner import deployments, timeline
from provisioner.errors import Problem
from provisioner.lifecycle import (
    POWER_ACTIONS,
    Action,
    State,
    allowed_actions,
    decide,
)
from provisioner.models import Bmc, Event, Nic, Node, OsImage, Role, table_of, utcnow
from provisioner.schemas import (
    ActionRequest,
    BmcOut,
    EventOut,
    NodeCreate,
    NodeOut,
    NodePatch,
)
from provisioner.secrets import Vault
from provisioner.steps import KIND_FOR_STATE, DeploymentKind, DeploymentStatus
from provisioner.timeline import EventKind

log = logging.getLogger(__name__)

MAX_EVENTS = 1000


# ---- reading -----------------------------------------------------------------------


def find(session: Session, ident: str) -> Node:
    """A node by id or by name; 404 otherwise."""
    try:
        node = session.get(Node, uuid.UUID(ident))
    except ValueError:
        node = session.exec(select(Node).where(Node.name == ident.lower())).first()
    if node is None:
        raise Problem(404, f"No node has the id or name {ident!r}.")
    return node


def etag(node: Node) -> str:
    return f'"{node.version}"'


def _failed_from(node: Node) -> State | None:
    return State(node.failed_from) if node.failed_from else None


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


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Problem(400, "The cursor is not one this service handed out.") from None


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


def page(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    state: str | None = None,
    role: str | None = None,
    rack: str | None = None,
    mac: str | None = None,
    maintenance: bool | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of node views ordered by name, and the cursor of the next page."""
    given = {
        "cursor": _decode_cursor(cursor) if cursor else None,
        "state": state,
        "role": role,
        "rack": rack,
        "mac": mac,
        "maintenance": maintenance,
    }
    params = {k: v for k, v in given.items() if v is not None and v != ""}
    nodes_statement, nics_statement = _page_statements(frozenset(params))
    connection = session.connection()
    rows = connection.execute(nodes_statement, {**params, "limit": limit + 1}).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1][_NAME])
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


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.exec(select(Node.state, func.count()).group_by(Node.state))
    return dict(rows.all())


# ---- checks shared by enrollment and changes -------------------------------------------


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
    """What a new or changed node wants for itself alone: a name, MACs, a rack position."""

    name: str | None = None
    macs: tuple[str, ...] = ()
    position: tuple[str, int] | None = None

    @classmethod
    def of(cls, item: NodeCreate) -> Claim:
        return cls(item.name, tuple(n.mac for n in item.nics), _position(item.rack, item.rack_unit))


def _position(rack: str | None, unit: int | None) -> tuple[str, int] | None:
    return (rack, unit) if rack is not None and unit is not None else None


def conflict_errors(
    session: Session, claims: Sequence[Claim], exclude: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """Rows (1-based) whose name, MACs or rack position belong to another node."""
    others = col(Node.id) != exclude if exclude else true()
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
    return errors


# ---- writing -----------------------------------------------------------------------


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


def enroll(
    session: Session,
    vault: Vault,
    items: Sequence[NodeCreate],
    actor: str,
    how: str,
    *,
    inspect: bool = False,
) -> list[dict[str, Any]]:
    """Create ``items`` as enrolled nodes in one transaction: all or none.

    Raises :class:`Problem` 422 for unknown roles/images and 409 for names or MACs in use,
    with ``errors`` naming each row (1-based). With ``inspect``, the reconciler inspects
    each new node once on its own.
    """
    unknown = "Some nodes name a role or image that does not exist."
    # One node's role and image are checked by its INSERT (see _insert_if_known).
    single = len(items) == 1
    if not single and (errors := reference_errors(session, items)):
        raise Problem(422, unknown, errors=errors)
    now = utcnow()
    node_rows: list[dict[str, Any]] = []
    bmc_rows: list[dict[str, Any]] = []
    nic_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    for item in items:
        node_id = uuid.uuid4()
        node_rows.append(
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
        bmc_rows.append(
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
            }
        )
        nic_rows.extend({"node_id": node_id, "mac": n.mac, "pxe": n.pxe} for n in item.nics)
        event_rows.append(
            timeline.event_row(node_id, EventKind.ENROLL, actor, how, to_state=State.ENROLLED)
        )
    try:
        # Core inserts on the session's connection: the ORM's bulk path costs several
        # times more Python per row, and enrollment is the API's hottest write.
        connection = session.connection()
        if single:
            (row,) = node_rows
            if connection.execute(_insert_if_known(tuple(row)), row).rowcount != 1:
                errors = reference_errors(session, items)
                session.rollback()
                if not errors:  # created between the two statements
                    raise Problem(409, "A role or image changed meanwhile; try again.")
                raise Problem(422, unknown, errors=errors)
        else:
            connection.execute(_insert(Node), node_rows)
        connection.execute(_insert(Bmc), bmc_rows)
        if nic_rows:
            connection.execute(_insert(Nic), nic_rows)
        timeline.note_many(connection, event_rows)
        session.commit()
    except IntegrityError:
        # The unique constraints are the check; asking first would cost every enrollment
        # three queries to help only the ones that fail.
        session.rollback()
        errors = conflict_errors(session, [Claim.of(i) for i in items])
        raise Problem(409, "Some names, MACs or rack positions are taken.", errors=errors) from None
    nics_by_node: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for nic in nic_rows:
        nics_by_node[nic["node_id"]].append(_Nic(nic["mac"], nic["pxe"]))
    return [
        _view(node, _Bmc(**{f: bmc[f] for f in _BMC_FIELDS}), nics_by_node[node["id"]])
        for node, bmc in zip(node_rows, bmc_rows, strict=True)
    ]


@contextmanager
def _saving(session: Session, node: Node) -> Iterator[None]:
    """Commit what the block wrote through the timeline, or answer 409 if the node
    changed since it was read (another request won the race)."""
    try:
        yield
    except timeline.Stale:
        session.rollback()
        raise Problem(
            409, "The node changed while this request ran; read it again and retry."
        ) from None
    session.commit()
    session.refresh(node)


def check_if_match(node: Node, if_match: str | None) -> None:
    if if_match is None or if_match.strip() == "*":
        return
    tags = {t.strip().removeprefix("W/") for t in if_match.split(",")}
    if etag(node) not in tags:
        raise Problem(
            412,
            f"The node has changed (its ETag is now {etag(node)}); fetch it again and "
            "reapply your change.",
        )


def change(
    session: Session, vault: Vault, node: Node, patch: NodePatch, actor: str, if_match: str | None
) -> Node:
    check_if_match(node, if_match)
    given = patch.model_fields_set
    if errors := reference_errors(session, [patch]):
        raise Problem(
            422, "The change names a role or image that does not exist.", errors=_fields(errors)
        )
    claim = Claim(
        name=patch.name if "name" in given else None,
        macs=tuple(n.mac for n in patch.nics or ()),
        position=_position(
            patch.rack if "rack" in given else node.rack,
            patch.rack_unit if "rack_unit" in given else node.rack_unit,
        ),
    )
    if errors := conflict_errors(session, [claim], exclude=node.id):
        raise Problem(409, "The name, a MAC or the rack position is taken.", errors=_fields(errors))
    if "name" in given and patch.name is None:
        raise Problem(
            422,
            "A node must keep a name.",
            errors=[{"field": "name", "message": "may not be null"}],
        )
    changes: dict[str, Any] = {
        field: getattr(patch, field)
        for field in ("name", "rack", "rack_unit", "role", "hardware_profile", "image")
        if field in given
    }
    touched = sorted(given)
    if patch.bmc is not None:
        _change_bmc(session, vault, node, patch)
        # New BMC settings deserve a fresh start of the power sync.
        changes.update(_POWER_RESET)
    if patch.nics is not None:
        session.execute(sql_delete(Nic).where(col(Nic.node_id) == node.id))
        if patch.nics:
            rows = [{"node_id": node.id, "mac": n.mac, "pxe": n.pxe} for n in patch.nics]
            session.execute(insert(Nic), rows)
    with _saving(session, node):
        message = f"changed {', '.join(touched) or 'nothing'}"
        timeline.change(session, node, changes, EventKind.UPDATE, actor, message)
    return node


_API_FIELDS = {"macs": "nics", "u": "rack_unit"}


def _fields(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors about one node in the API's terms: no row number, request field names."""
    return [
        {"field": _API_FIELDS.get(e["field"], e["field"]), "message": e["message"]} for e in errors
    ]


def enroll_one(
    session: Session, vault: Vault, item: NodeCreate, actor: str, *, inspect: bool = False
) -> dict[str, Any]:
    try:
        (node,) = enroll(session, vault, [item], actor, "enrolled through the API", inspect=inspect)
    except Problem as problem:
        problem.extra["errors"] = _fields(problem.extra.get("errors", []))
        raise
    return node


def _change_bmc(session: Session, vault: Vault, node: Node, patch: NodePatch) -> None:
    assert patch.bmc is not None
    bmc = session.get(Bmc, node.id)
    fields = patch.bmc.model_dump(exclude_unset=True, exclude={"password"})
    if bmc is None:
        missing = [f for f in ("address", "username", "password") if getattr(patch.bmc, f) is None]
        if missing:
            raise Problem(
                422,
                "This node has no BMC yet: give address, username and password.",
                errors=[{"field": f"bmc.{f}", "message": "required"} for f in missing],
            )
        bmc = Bmc(node_id=node.id, password_encrypted="", **fields)
    else:
        for key, value in fields.items():
            if value is not None:
                setattr(bmc, key, value)
    if patch.bmc.password is not None:
        bmc.password_encrypted = vault.encrypt(patch.bmc.password.get_secret_value())
    session.add(bmc)
    session.flush()


def remove(session: Session, node: Node, actor: str) -> None:
    state = State(node.state)
    if state in (State.INSPECTING, State.PROVISIONING, State.WIPING) and not node.maintenance:
        raise Problem(
            409,
            f"The node is {state.value}; abort it first, or set maintenance-on to delete it "
            "anyway.",
        )
    session.execute(sql_delete(Node).where(col(Node.id) == node.id))
    session.commit()
    log.info("node %s (%s) deleted by %s", node.name, node.id, actor)


def act(
    session: Session,
    node: Node,
    action: Action,
    body: ActionRequest,
    actor: str,
    *,
    vault: Vault,
    deploy_timeout: float,
    batch: deployments.Batch | None = None,
) -> Node:
    """Validate ``action`` against the lifecycle and record it; the reconciler does the work.

    Entering provisioning or wiping starts a deployment at once, so a machine that
    network-boots from now on gets its installer even before the reconciler powers it.
    """
    state = State(node.state)
    to_state = decide(
        state, action, maintenance=node.maintenance, failed_from=_failed_from(node)
    ).to_state
    changes: dict[str, Any] = {}
    message = body.reason or f"{action.value} requested"
    if action is Action.MAINTENANCE_ON:
        changes.update(maintenance=True, maintenance_reason=body.reason)
    elif action is Action.MAINTENANCE_OFF:
        changes.update(maintenance=False, maintenance_reason=None)
    elif action in POWER_ACTIONS:
        changes.update(_POWER_RESET, target_power=action.value.removeprefix("power-"))
    elif action in (Action.PROVISION, Action.REIMAGE):
        changes.update(_deployment_choice(session, node, body))
        message = f"{action.value} as role {changes['role']} with image {changes['image']}"
        if body.reason:
            message += f": {body.reason}"
    if to_state is State.FAILED:
        changes["last_error"] = f"aborted by {actor} while {state.value}"
    if to_state in KIND_FOR_STATE:
        changes.update(wake_at=None, auto_provision=False)
        deployments.start(
            session,
            vault,
            node.id,
            kind=_kind_of(action, to_state),
            role=changes.get("role", node.role),
            image=changes.get("image", node.image),
            timeout=deploy_timeout,
            batch=batch,
        )
    elif action is Action.ABORT:
        deployments.end_live(session, node.id, DeploymentStatus.ABORTED, f"aborted by {actor}")
    with _saving(session, node):
        timeline.transition(session, node, action, actor, message, changes=changes)
    return node


def _kind_of(action: Action, to_state: State) -> DeploymentKind:
    """The kind of deployment an action starts: its own (provision, reimage), or the
    one its new state's work begins with (a release wipes; a retry starts over)."""
    if action is Action.PROVISION:
        return DeploymentKind.PROVISION
    if action is Action.REIMAGE:
        return DeploymentKind.REIMAGE
    return KIND_FOR_STATE[to_state]


# Clears a node flagged by the power sync: an operator has acted on its BMC.
_POWER_RESET: dict[str, Any] = {"power_failures": 0, "power_reason": None}


def _deployment_choice(session: Session, node: Node, body: ActionRequest) -> dict[str, str]:
    role_name = body.role or node.role
    if role_name is None:
        raise Problem(
            422,
            'Provisioning needs a role: pass {"role": ...} or set the node\'s role.',
            errors=[{"field": "role", "message": "required"}],
        )
    role = session.get(Role, role_name)
    if role is None:
        raise Problem(
            422,
            f"Unknown role {role_name!r}; create it first (POST /api/v1/roles).",
            errors=[{"field": "role", "message": "unknown role"}],
        )
    image_name = body.image or (node.image if not body.role else None) or role.default_image
    if image_name is None:
        raise Problem(
            422,
            f'Provisioning needs an image: pass {{"image": ...}} or set role {role.name!r}\'s '
            "default_image.",
            errors=[{"field": "image", "message": "required"}],
        )
    if session.get(OsImage, image_name) is None:
        raise Problem(
            422,
            f"Unknown image {image_name!r}; see GET /api/v1/images.",
            errors=[{"field": "image", "message": "unknown image"}],
        )
    return {"role": role.name, "image": image_name}
