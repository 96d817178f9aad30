"""Enrollment: new nodes from the API (one) or a rack manifest (many), each with its BMC,
NICs and first event, in one transaction: all or none.

Enrollment is the API's hottest write: rows go in through Core inserts built once, and
the checks ride on the inserts or run only after one fails.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, exists, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from provisioner import timeline
from provisioner.errors import Problem
from provisioner.lifecycle import Outcome, State
from provisioner.models import Bmc, Nic, Node, OsImage, Role, table_of, utcnow
from provisioner.nodes.checks import Claim, conflict_errors, in_api_terms, reference_errors
from provisioner.nodes.queries import present_written
from provisioner.schemas import NodeCreate
from provisioner.secrets import Vault


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
            timeline.event_row(node_id, Outcome.ENROLL, actor, how, to_state=State.ENROLLED)
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
    return present_written(node_rows, bmc_rows, nic_rows)


def enroll_one(
    session: Session, vault: Vault, item: NodeCreate, actor: str, *, inspect: bool = False
) -> dict[str, Any]:
    try:
        (node,) = enroll(session, vault, [item], actor, "enrolled through the API", inspect=inspect)
    except Problem as problem:
        problem.extra["errors"] = in_api_terms(problem.extra.get("errors", []))
        raise
    return node
