"""Hand-off by role: how a provisioned node is given to configuration management, and
the calls the reconciler makes around it.

A role's ``handoff`` says when the hand-off is complete, and so when the node goes from
``provisioned`` to ``active``:

- ``immediate``: at once;
- ``webhook``: when the role's webhook acknowledged ``node.provisioned`` (a 2xx);
- ``enc``: when Puppet first fetched the node's classification after the install.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session, col

from provisioner.handoff.webhooks import (
    ACTIVE,
    FAILED,
    PROVISIONED,
    WebhookSender,
    enqueue,
    pending_handoff,
)
from provisioner.models import Deployment, Node, Role
from provisioner.schemas import Handoff
from provisioner.secrets import Vault

__all__ = ["ACTIVE", "FAILED", "WebhookSender", "begin", "completed", "notify"]


def _webhook_role(session: Session, node: Node) -> Role | None:
    role = session.get(Role, node.role) if node.role else None
    wants_webhook = role is not None and role.handoff == Handoff.WEBHOOK and role.webhook_url
    return role if wants_webhook else None


def begin(session: Session, vault: Vault, node: Node, deployment: Deployment) -> None:
    """The node reached ``provisioned``: request the hand-off (no commit).

    ``vault`` is not needed today (the secret is decrypted when sending, so a rotated
    secret also signs the deliveries still waiting); it is part of the interface.
    """
    role = _webhook_role(session, node)
    if role is not None and pending_handoff(session, deployment) is None:
        enqueue(session, node, role, PROVISIONED, deployment)


def completed(session: Session, node: Node, deployment: Deployment) -> bool:
    """Whether the hand-off of ``deployment`` is done, as the node's role configures."""
    role = session.get(Role, node.role) if node.role else None
    if role is None or role.handoff == Handoff.IMMEDIATE:
        return True
    # A column, not the entity: the caller's copy of the deployment may be stale.
    handoff_at = session.execute(
        select(col(Deployment.handoff_at)).where(col(Deployment.id) == deployment.id)
    ).scalar_one_or_none()
    if handoff_at is not None:
        return True
    # A role made a webhook role after its node reached `provisioned` has nothing to
    # wait for: no hand-off was requested.
    return role.handoff == Handoff.WEBHOOK and pending_handoff(session, deployment) is None


def notify(
    session: Session, vault: Vault, node: Node, event: str, deployment: Deployment | None
) -> None:
    """Tell a webhook role that its node became ``active`` or ``failed`` (no commit)."""
    if event not in (ACTIVE, FAILED):
        raise ValueError(f"notify takes {ACTIVE} or {FAILED}, not {event!r}")
    role = _webhook_role(session, node)
    if role is not None:
        enqueue(session, node, role, event, deployment)
