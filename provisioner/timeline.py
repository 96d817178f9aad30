"""A node's timeline: the one writer of node state and of events.

Every lifecycle transition goes through :func:`transition` (decided by
:mod:`provisioner.lifecycle`, written only if the node is still at the version that was
read and, for the reconciler, still leased to the writer), with its event in the same
transaction. Everything else that happens to a node, from a boot hop to a webhook
delivery, is an event written by :func:`note` (one) or :func:`note_many` (a batch), so the
timeline is the node's whole audit log and no other module inserts events or sets
``Node.state``. Nothing here commits: the caller's transaction holds the change and
whatever goes with it (a deployment, a webhook in the outbox).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, update
from sqlmodel import Session, col

from provisioner.lifecycle import Action, Outcome, State, Transition, decide
from provisioner.models import Event, InventoryFact, Node, table_of, utcnow


class Actor(StrEnum):
    """Who did something, when it was not an operator (whose token name is the actor)."""

    PROVISIONER = "provisioner"
    INSTALLER = "installer"
    AGENT = "agent"
    NODE = "node"
    PUPPET = "puppet"
    WEBHOOK = "webhook"
    POWER_SYNC = "power-sync"


class EventKind(StrEnum):
    """What an event that is not a lifecycle transition records. A transition's event
    is named by the :class:`~provisioner.lifecycle.Action` or
    :class:`~provisioner.lifecycle.Outcome` that caused it (see :data:`Kind`)."""

    UPDATE = "update"
    DISCOVERED = "discovered"
    # Power and boot device
    POWER = "power"
    POWER_FAILED = "power-failed"
    POWER_SYNC = "power-sync"
    POWER_SYNC_FAILED = "power-sync-failed"
    POWER_SYNC_FLAGGED = "power-sync-flagged"
    BOOT_DEVICE = "boot-device"
    # The boot chain, as the machine walks it
    BOOT_DHCP = "boot-dhcp"
    BOOT_IPXE = "boot-ipxe"
    BOOT_TFTP = "boot-tftp"
    BOOT_FILE = "boot-file"
    BOOT_ANSWER = "boot-answer"
    # Hops first kept without a node (provisioner/boot/hops.py), claimed by one later
    TFTP_CONFIG = "tftp-config"
    HTTP_FILE = "http-file"
    CALLBACK_STARTED = "callback-started"
    CALLBACK_PROGRESS = "callback-progress"
    CALLBACK_DONE = "callback-done"
    CALLBACK_FAILED = "callback-failed"
    # The deploy agent: its inventory, commands and results, and each disk's wipe
    AGENT = "agent"
    WIPE = "wipe"
    # Hand-off
    HANDOFF = "handoff"
    AUTOSIGN = "autosign"
    WEBHOOK = "webhook"
    PUPPET_CA = "puppet-ca"


# Every event's kind: an operator's action, a step's outcome, or one of the above.
Kind = Action | Outcome | EventKind


class Stale(Exception):
    """The node changed (or its lease moved) since it was read; nothing was written."""


def event_row(
    node_id: uuid.UUID,
    kind: Kind,
    actor: Actor | str,
    message: str,
    *,
    from_state: State | None = None,
    to_state: State | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """An event as the values of one row, for :func:`note_many`. ``actor`` is an
    :class:`Actor` or the name of the API token that asked."""
    return {
        "node_id": node_id,
        "time": time or utcnow(),
        "actor": str(actor)[:64],
        "kind": kind.value,
        "from_state": from_state.value if from_state else None,
        "to_state": to_state.value if to_state else None,
        "message": message[:2000],
    }


@functools.cache
def _insert_events() -> Any:
    # Built once: SQLAlchemy keys its compiled-statement cache on the statement object.
    return table_of(Event).insert()


def note_many(connection: Connection | Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add a batch of events made by :func:`event_row` (no commit)."""
    if rows:
        connection.execute(_insert_events(), list(rows))


def note(
    session: Session | Connection,
    node_id: uuid.UUID,
    kind: EventKind,
    actor: Actor | str,
    message: str,
) -> None:
    """Add one event that changes no state (no commit)."""
    note_many(session, [event_row(node_id, kind, actor, message)])


def transition(
    session: Session,
    node: Node,
    change: Action | Outcome,
    actor: Actor | str,
    message: str,
    *,
    changes: Mapping[str, Any] | None = None,
    facts: tuple[str, dict[str, Any]] | None = None,
    lease_owner: str | None = None,
) -> Transition:
    """Move ``node`` along its lifecycle by ``change`` and record why (no commit).

    Raises :class:`~provisioner.lifecycle.IllegalAction` when the lifecycle does not
    allow it, and :class:`Stale` when the row is no longer at ``node.version`` (or, with
    ``lease_owner``, no longer leased to it): the caller reads the node again and
    decides again. ``facts`` is (source, facts) to keep with the change.
    """
    failed_from = State(node.failed_from) if node.failed_from else None
    moved = decide(State(node.state), change, maintenance=node.maintenance, failed_from=failed_from)
    final: dict[str, Any] = {}
    if moved.to_state is State.FAILED and moved.from_state is not State.FAILED:
        final.update(failed_from=moved.from_state.value, last_error=message[:2000])
    elif moved.from_state is State.FAILED and moved.to_state is not State.FAILED:
        final.update(failed_from=None, last_error=None)
    final.update(changes or {})
    final["state"] = moved.to_state.value
    _update(session, node, final, lease_owner)
    row = event_row(
        node.id, change, actor, message, from_state=moved.from_state, to_state=moved.to_state
    )
    note_many(session, [row])
    if facts is not None:
        source, found = facts
        session.add(InventoryFact(node_id=node.id, source=source, facts=found))
    return moved


def change(
    session: Session,
    node: Node,
    changes: Mapping[str, Any],
    kind: EventKind,
    actor: Actor | str,
    message: str,
    *,
    lease_owner: str | None = None,
) -> None:
    """Change a node's recorded facts (not its state) and say why (no commit).

    Raises :class:`Stale` like :func:`transition`."""
    if "state" in changes:
        raise ValueError("a node's state changes only through timeline.transition")
    _update(session, node, changes, lease_owner)
    note(session, node.id, kind, actor, message)


def _update(
    session: Session, node: Node, changes: Mapping[str, Any], lease_owner: str | None
) -> None:
    query = update(Node).where(col(Node.id) == node.id, col(Node.version) == node.version)
    if lease_owner is not None:
        query = query.where(col(Node.lease_owner) == lease_owner)
    result = session.execute(query.values(**changes, version=node.version + 1, updated_at=utcnow()))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Stale(f"node {node.name} changed while this was being decided")
