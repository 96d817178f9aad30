"""/api/v1/nodes: enroll, list, show, change, delete, act, timeline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response, status
from pydantic import AfterValidator

from provisioner import nodes, validation
from provisioner.api.deps import Operator, SessionDep, VaultDep, Viewer
from provisioner.lifecycle import Action, State
from provisioner.schemas import (
    ActionRequest,
    EventOut,
    NodeCreate,
    NodeOut,
    NodePage,
    NodePatch,
    RackName,
    Slug,
)

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])

NodeRef = Annotated[str, "a node's id or name"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=NodeOut)
def enroll_node(
    body: NodeCreate, session: SessionDep, vault: VaultDep, token: Operator, response: Response
) -> NodeOut:
    """Enroll one server by its BMC; it starts in the ``enrolled`` state."""
    node = nodes.enroll_one(session, vault, body, token.name)
    response.headers["ETag"] = nodes.etag(node)
    response.headers["Location"] = f"/api/v1/nodes/{node.id}"
    return nodes.present(session, [node])[0]


@router.get("", response_model=NodePage)
def list_nodes(
    session: SessionDep,
    _: Viewer,
    state: State | None = None,
    role: Slug | None = None,
    rack: RackName | None = None,
    mac: Annotated[str | None, AfterValidator(lambda v: v and validation.normalize_mac(v))] = None,
    maintenance: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> NodePage:
    """Nodes ordered by name, filtered, one page at a time (follow ``next_cursor``)."""
    items, next_cursor = nodes.page(
        session,
        limit=limit,
        cursor=cursor,
        state=state.value if state else None,
        role=role,
        rack=rack,
        mac=mac,
        maintenance=maintenance,
    )
    return NodePage(items=nodes.present(session, items), next_cursor=next_cursor)


@router.get("/{ref}", response_model=NodeOut)
def show_node(ref: NodeRef, session: SessionDep, _: Viewer, response: Response) -> NodeOut:
    node = nodes.find(session, ref)
    response.headers["ETag"] = nodes.etag(node)
    return nodes.present(session, [node])[0]


@router.patch("/{ref}", response_model=NodeOut)
def change_node(
    ref: NodeRef,
    body: NodePatch,
    session: SessionDep,
    vault: VaultDep,
    token: Operator,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> NodeOut:
    """Change fields; send ``If-Match`` with the ETag you read to refuse a stale write."""
    node = nodes.change(session, vault, nodes.find(session, ref), body, token.name, if_match)
    response.headers["ETag"] = nodes.etag(node)
    return nodes.present(session, [node])[0]


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_node(ref: NodeRef, session: SessionDep, token: Operator) -> None:
    nodes.remove(session, nodes.find(session, ref), token.name)


@router.post(
    "/{ref}/actions/{action}", status_code=status.HTTP_202_ACCEPTED, response_model=NodeOut
)
def act_on_node(
    ref: NodeRef,
    action: Action,
    session: SessionDep,
    token: Operator,
    response: Response,
    body: Annotated[ActionRequest | None, Body()] = None,
) -> NodeOut:
    """Ask for a lifecycle or power action. 409 names the actions allowed now."""
    node = nodes.act(session, nodes.find(session, ref), action, body or ActionRequest(), token.name)
    response.headers["ETag"] = nodes.etag(node)
    return nodes.present(session, [node])[0]


@router.get("/{ref}/events", response_model=list[EventOut])
def node_events(ref: NodeRef, session: SessionDep, _: Viewer) -> list[EventOut]:
    """The node's timeline, oldest first."""
    return nodes.events(session, nodes.find(session, ref))
