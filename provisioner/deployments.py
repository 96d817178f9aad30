"""Deployments: one per installation (or wipe) of a node, with the one-time token that is
the only credential a booting machine ever holds.

A deployment is *live* from the accepted action until the installer reports ``done`` or
``failed``, a newer deployment replaces it, the operator aborts, or its deadline passes.
Only a live deployment's token opens its answer file and takes callbacks; anything else
is refused and changes nothing.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Connection, bindparam, insert, update
from sqlmodel import Session, col, select

from provisioner import db
from provisioner.errors import Problem
from provisioner.models import Deployment, Node, table_of, utcnow
from provisioner.secrets import Vault, hash_token
from provisioner.steps import (
    INSTALL_KINDS,
    LIVE,
    DeploymentKind,
    DeploymentStatus,
    Method,
    first_step,
)
from provisioner.timeline import Actor, EventKind, note


class Callback(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"


# Where each callback may come from, where it leads, and how the timeline names it.
_CALLBACK_RULES: dict[
    Callback, tuple[tuple[DeploymentStatus, ...], DeploymentStatus | None, EventKind]
] = {
    Callback.STARTED: (
        (DeploymentStatus.PENDING,),
        DeploymentStatus.STARTED,
        EventKind.CALLBACK_STARTED,
    ),
    Callback.PROGRESS: (LIVE, None, EventKind.CALLBACK_PROGRESS),
    Callback.DONE: (LIVE, DeploymentStatus.DONE, EventKind.CALLBACK_DONE),
    Callback.FAILED: (LIVE, DeploymentStatus.FAILED, EventKind.CALLBACK_FAILED),
}


@dataclass(frozen=True)
class Batch:
    """Deployments started together by one bulk request, at most ``limit`` in flight."""

    id: uuid.UUID
    limit: int


@dataclass(frozen=True)
class Live:
    """A live deployment with its secrets decrypted, for rendering scripts and answers."""

    row: Deployment
    token: str
    challenge: str


def start(
    session: Session,
    vault: Vault,
    node_id: uuid.UUID,
    kind: DeploymentKind,
    method: Method,
    role: str | None,
    image: str | None,
    timeout: float,
    batch: Batch | None = None,
) -> None:
    """Add a new deployment to the session, ending the node's live one.

    Does not commit: the caller writes it in the same transaction as the node's state
    change, so a request that loses an optimistic-concurrency race leaves no deployment.
    """
    end_live(session, node_id, DeploymentStatus.SUPERSEDED, "replaced by a new deployment")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(
        insert(table_of(Deployment)).values(
            id=uuid.uuid4(),
            node_id=node_id,
            kind=kind.value,
            method=method.value,
            role=role,
            image=image,
            token_hash=hash_token(token),
            token_encrypted=vault.encrypt(token),
            challenge_encrypted=vault.encrypt(secrets.token_urlsafe(24)),
            status=DeploymentStatus.PENDING.value,
            step=first_step(kind, method).value,
            step_started_at=now,
            step_attempts=0,
            message="",
            batch_id=batch.id if batch else None,
            batch_limit=batch.limit if batch else None,
            created_at=now,
            expires_at=now + timedelta(seconds=timeout),
        )
    )


def end_live(session: Session, node_id: uuid.UUID, status: DeploymentStatus, message: str) -> None:
    """End the node's live deployment, if any (no commit)."""
    session.execute(
        update(table_of(Deployment))
        .where(col(Deployment.node_id) == node_id, col(Deployment.status).in_(LIVE))
        .values(status=status.value, message=message, finished_at=utcnow())
    )


def latest(session: Session, node_id: uuid.UUID) -> Deployment | None:
    """The node's newest deployment, whatever its kind or status."""
    return session.exec(
        select(Deployment)
        .where(col(Deployment.node_id) == node_id)
        .order_by(col(Deployment.created_at).desc())
    ).first()


def installation(session: Session, node_id: uuid.UUID) -> Deployment | None:
    """The deployment that put the node's current operating system in place, or is
    putting it there now: its newest deployment, if that is an install (a provision or
    a reimage, which are the same to everything after them). After a release the
    newest is a wipe, and the node has no installation."""
    newest = latest(session, node_id)
    if newest is None or DeploymentKind(newest.kind) not in INSTALL_KINDS:
        return None
    return newest


_deployment = table_of(Deployment)

# Built once, and read without the ORM: a deploying node's iPXE script needs it on every
# boot request, and the ORM's query and object set-up cost many times SQLite's lookup.
_LIVE_FOR_NODE = (
    _deployment.select()
    .where(_deployment.c.node_id == bindparam("node_id"), _deployment.c.status.in_(LIVE))
    .order_by(_deployment.c.created_at.desc())
    .limit(1)
)


def live_for_node(connection: Connection, vault: Vault, node_id: uuid.UUID) -> Live | None:
    found = connection.execute(_LIVE_FOR_NODE, {"node_id": node_id}).first()
    if found is None:
        return None
    row = Deployment(**found._mapping)
    if _expired(row, utcnow()):
        return None
    return _reveal(vault, row)


def by_token(session: Session, vault: Vault, token: str) -> Live:
    """The live deployment ``token`` belongs to; 404 for a token never issued, 410 for
    one whose deployment has ended."""
    row = session.exec(select(Deployment).where(Deployment.token_hash == hash_token(token))).first()
    if row is None:
        raise Problem(404, "No deployment has this token.")
    if DeploymentStatus(row.status) not in LIVE:
        raise Problem(410, f"This deployment has ended ({row.status}); its token is spent.")
    if _expired(row, utcnow()):
        raise Problem(410, "This deployment's deadline has passed; its token has expired.")
    return _reveal(vault, row)


def callback(
    session: Session, vault: Vault, token: str, kind: Callback, message: str, client: str
) -> Deployment:
    """Record an installer callback on the deployment and the node's timeline."""
    live = by_token(session, vault, token)
    row = live.row
    allowed_from, new_status, event_kind = _CALLBACK_RULES[kind]
    if DeploymentStatus(row.status) not in allowed_from:
        raise Problem(409, f"The installer already reported {row.status!r}; {kind} is late.")
    # The node's row before the deployment's, in the step runner's order: the other
    # order deadlocks with a step being recorded for the node.
    db.lock_in_order(session, table_of(Node), [row.node_id])
    now = utcnow()
    values: dict[str, object] = {"message": message} if message else {}
    if new_status is not None:
        values["status"] = new_status.value
        if new_status is DeploymentStatus.STARTED:
            values["started_at"] = now
        else:
            values["finished_at"] = now
    if values:
        result = session.execute(
            update(table_of(Deployment))
            .where(col(Deployment.id) == row.id, col(Deployment.status) == row.status)
            .values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            raise Problem(409, "Another callback for this deployment won the race; retry.")
    if new_status in (DeploymentStatus.DONE, DeploymentStatus.FAILED):
        # The reconciler sleeps until the deadline while an installer runs: wake it.
        session.execute(update(Node).where(col(Node.id) == row.node_id).values(wake_at=None))
    # An agent's deployment is called back by the system it wrote, at its first boot.
    caller = "deployed system" if row.method == Method.AGENT.value else "installer"
    text = f"{caller} {kind.value} (deployment {str(row.id)[:8]}, from {client})"
    if message:
        text += f": {message}"
    note(session, row.node_id, event_kind, Actor.INSTALLER, text)
    session.commit()
    session.refresh(row)
    return row


def _expired(row: Deployment, now: datetime) -> bool:
    expires = row.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive datetimes, stored as UTC
        expires = expires.replace(tzinfo=now.tzinfo)
    return now >= expires


def _reveal(vault: Vault, row: Deployment) -> Live:
    return Live(row, vault.decrypt(row.token_encrypted), vault.decrypt(row.challenge_encrypted))
