"""One action over a selection of nodes: a rack, a role, a list of names.

Each node is acted on in its own transaction, exactly as a single request would be: a
node the lifecycle refuses is listed with the reason and the others go ahead. The
deployments a bulk request starts share a batch whose ``max_in_flight`` the reconciler
honours when it powers machines on.
"""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, select

from provisioner import nodes
from provisioner.deployments import Batch
from provisioner.errors import Problem
from provisioner.lifecycle import Action, IllegalAction
from provisioner.models import Node
from provisioner.nodes.actions import NO_WIPE_IMAGE, check_skip_wipe, wiper
from provisioner.schemas import ActionRequest, BulkActionOut, BulkActionRequest, Refusal
from provisioner.secrets import Vault
from provisioner.settings import Settings

MAX_NODES = 10_000


def select_nodes(session: Session, request: BulkActionRequest) -> list[Node]:
    selection = request.selection
    query = select(Node)
    if selection.names:
        query = query.where(col(Node.name).in_(selection.names))
    if selection.rack:
        query = query.where(Node.rack == selection.rack)
    if selection.role:
        query = query.where(Node.role == selection.role)
    if selection.state:
        query = query.where(Node.state == selection.state.value)
    found = list(session.exec(query.order_by(col(Node.name)).limit(MAX_NODES + 1)))
    if len(found) > MAX_NODES:
        raise Problem(422, f"The selection matches more than {MAX_NODES:,} nodes; narrow it.")
    if selection.names:
        missing = sorted(set(selection.names) - {n.name for n in found})
        if missing:
            raise Problem(
                404,
                f"No node is named {', '.join(missing[:10])}"
                + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
                + "; nothing was done.",
            )
    if not found:
        raise Problem(404, "No node matches the selection; nothing was done.")
    return found


def apply(
    session: Session,
    vault: Vault,
    request: BulkActionRequest,
    actor: str,
    settings: Settings,
) -> BulkActionOut:
    """Act on each selected node. What is wrong with the request itself (``skip_wipe``
    with another action, a release with nothing to wipe with) refuses it whole, before
    any node is touched."""
    check_skip_wipe(request.action, request)
    if request.action is Action.RELEASE and not (request.skip_wipe or wiper(settings)):
        raise Problem(409, NO_WIPE_IMAGE + " Nothing was done.")
    batch = Batch(uuid.uuid4(), request.max_in_flight) if request.max_in_flight else None
    body = ActionRequest(
        reason=request.reason, role=request.role, image=request.image, skip_wipe=request.skip_wipe
    )
    accepted: list[str] = []
    refused: list[Refusal] = []
    for node in select_nodes(session, request):
        try:
            nodes.act(
                session,
                node,
                request.action,
                body,
                actor,
                vault=vault,
                settings=settings,
                batch=batch,
            )
        except Problem as problem:
            session.rollback()
            refused.append(Refusal(name=node.name, reason=problem.detail))
        except IllegalAction as illegal:
            session.rollback()
            refused.append(Refusal(name=node.name, reason=str(illegal)))
        else:
            accepted.append(node.name)
    return BulkActionOut(batch_id=batch.id if batch else None, accepted=accepted, refused=refused)
