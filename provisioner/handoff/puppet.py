"""Puppet: the external node classifier (ENC) and the policy-autosign decision.

Both identify the node by its Puppet certname, which is the node's name or its FQDN
under the service's domain.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from provisioner import deployments
from provisioner.errors import Problem
from provisioner.handoff.roles import puppet_classes
from provisioner.handoff.webhooks import wake
from provisioner.lifecycle import State, installed
from provisioner.models import Deployment, Node, Role, table_of, utcnow
from provisioner.schemas import Handoff
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import LIVE, DeploymentStatus
from provisioner.timeline import Actor, EventKind, note


def find_node(session: Session, settings: Settings, certname: str) -> Node | None:
    names = {certname.lower()}
    suffix = f".{settings.domain.lower()}" if settings.domain else None
    if suffix and certname.lower().endswith(suffix):
        names.add(certname.lower().removesuffix(suffix))
    return session.exec(select(Node).where(col(Node.name).in_(names))).first()


def enc(session: Session, settings: Settings, certname: str) -> dict[str, Any]:
    """The classification of the node named ``certname``; fetching it may complete the
    node's hand-off (:func:`record_enc_fetch`)."""
    node = find_node(session, settings, certname)
    if node is None:
        raise Problem(
            404,
            f"No node has the certname {certname!r}; it must be a node name, or that name "
            "under PROVISIONER_DOMAIN.",
        )
    found = classification(session, node)
    record_enc_fetch(session, node)
    return found


def classification(session: Session, node: Node) -> dict[str, Any]:
    """What ``external_nodes`` prints: classes (the mapping form, so that parameterised
    classes fit too), top-scope parameters and the environment.

    A node is classified in its role only while it is installed in it: once released
    (wiping, or ready again with or without a wipe) it runs no system of that role, and
    a Puppet agent left on it must not be given the role's classes."""
    failed_from = State(node.failed_from) if node.failed_from else None
    in_role = node.role if installed(State(node.state), failed_from) else None
    role = session.get(Role, in_role) if in_role else None
    facts = {
        "node_name": node.name,
        "role": in_role,
        "rack": node.rack,
        "rack_unit": node.rack_unit,
        "hardware_profile": node.hardware_profile,
        "image": node.image,
    }
    # The node's own facts win: a role parameter named `rack` must not misplace it.
    parameters = (role.parameters if role else {}) | {
        k: v for k, v in facts.items() if v is not None
    }
    out: dict[str, Any] = {
        "classes": {name: {} for name in puppet_classes(role)} if role else {},
        "parameters": parameters,
    }
    if role:
        out["environment"] = role.puppet_environment
    return out


def record_enc_fetch(session: Session, node: Node) -> None:
    """Puppet fetching the classification of a provisioned ``enc`` node is the hand-off."""
    if node.state != State.PROVISIONED.value or not node.role:
        return
    role = session.get(Role, node.role)
    deployment = deployments.installation(session, node.id)
    if role is None or role.handoff != Handoff.ENC or deployment is None:
        return
    done = session.execute(
        update(table_of(Deployment))
        .where(col(Deployment.id) == deployment.id, col(Deployment.handoff_at).is_(None))
        .values(handoff_at=utcnow())
    )
    if done.rowcount:  # type: ignore[attr-defined]
        wake(session, node.id)
        fetched = "Puppet fetched its classification (ENC)"
        note(session, node.id, EventKind.HANDOFF, Actor.PUPPET, fetched)
    session.commit()


@dataclass(frozen=True)
class Decision:
    sign: bool
    reason: str


def autosign(
    session: Session,
    vault: Vault,
    settings: Settings,
    certname: str,
    challenge: str | None,
    pp_role: str | None,
) -> Decision:
    """Sign only a CSR carrying the challenge of the node's current installation and
    the node's role; each challenge signs one CSR (a reimage brings a new one)."""
    node = find_node(session, settings, certname)
    if node is None:
        return Decision(False, f"no node has certname {certname!r}")
    decision = _check(session, vault, node, challenge, pp_role)
    verdict = ("signed: " if decision.sign else "refused: ") + decision.reason
    note(session, node.id, EventKind.AUTOSIGN, Actor.PUPPET, verdict)
    session.commit()
    return decision


def _check(
    session: Session, vault: Vault, node: Node, challenge: str | None, pp_role: str | None
) -> Decision:
    deployment = deployments.installation(session, node.id)
    if deployment is None or deployment.status not in (*LIVE, DeploymentStatus.DONE):
        return Decision(False, f"node {node.name} has no installation in progress or finished")
    if not challenge:
        return Decision(False, "the CSR has no challengePassword (csr_attributes.yaml)")
    expected = vault.decrypt(deployment.challenge_encrypted)
    if not hmac.compare_digest(expected.encode(), challenge.encode()):
        return Decision(False, f"the challenge is not that of node {node.name}'s current install")
    if pp_role != node.role:
        return Decision(
            False, f"pp_role is {pp_role!r} but node {node.name} has role {node.role!r}"
        )
    # Conditional: of two CSRs racing with one challenge, exactly one is signed.
    used = session.execute(
        update(table_of(Deployment))
        .where(col(Deployment.id) == deployment.id, col(Deployment.challenge_used_at).is_(None))
        .values(challenge_used_at=utcnow())
    )
    if not used.rowcount:  # type: ignore[attr-defined]
        return Decision(False, "the challenge was used already; reimage the node for a new one")
    return Decision(True, f"challenge and role {node.role} match node {node.name}")
