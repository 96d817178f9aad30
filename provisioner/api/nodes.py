"""/api/v1/nodes: enroll, list, show, change, delete, act, timeline."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response, status
from pydantic import TypeAdapter

from provisioner import nodes
from provisioner.api.deps import (
    Operator,
    ServicesDep,
    SessionDep,
    SettingsDep,
    VaultDep,
    Viewer,
    run_db,
)
from provisioner.api.problems import API_ERRORS, responses
from provisioner.lifecycle import Action, State
from provisioner.models import Bmc, Node
from provisioner.nodes.auto_driver import find_auto_drivers, find_patch_driver
from provisioner.schema_types import Mac, never_null
from provisioner.schemas import (
    ActionRequest,
    EventOut,
    NodeCreate,
    NodeOut,
    NodePage,
    NodePatch,
    RackName,
    Slug,
    WipeOut,
)

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"], responses=API_ERRORS)

_TAKEN = (409, "A name, MAC, rack position or BMC address and port is another node's.")

NodeRef = Annotated[str, "a node's id or name"]

# RFC 9110 If-Match: "*" or a list of quoted entity tags (checked in nodes.check_if_match).
_ETAG = r'(W/)?"[\x21\x23-\x7e]*"'
_IF_MATCH_PATTERN = rf"^[ \t]*\*[ \t]*$|^[ \t]*{_ETAG}[ \t]*(,[ \t]*{_ETAG}[ \t]*)*$"


def _if_match(schema: dict[str, Any]) -> None:
    # A header is left out or has a value: never null, which a client would send as "null".
    schema.clear()
    schema.update(type="string", pattern=_IF_MATCH_PATTERN, examples=['"1"'])


_NODE = TypeAdapter(NodeOut)


def node_response(
    view: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """One node as JSON. Handlers return Responses so that FastAPI does not validate the
    same data a second time against ``response_model``, which still documents them."""
    body = _NODE.dump_json(_NODE.validate_python(view))
    etag = {"ETag": f'"{view["version"]}"'}
    return Response(body, status_code, {**etag, **(headers or {})}, "application/json")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NodeOut,
    responses=responses(400, 403, _TAKEN, 413, 422),
)
async def enroll_node(
    body: NodeCreate,
    services: ServicesDep,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    token: Operator,
) -> Response:
    """Enroll one server by its BMC; it starts ``enrolled`` and, unless the service is
    configured otherwise, is inspected right after. If one of its MACs belongs to a
    ``discovered`` node, that node is adopted: it keeps its id and timeline and takes
    the name, BMC and the rest of the request. BMC driver ``auto`` probes Redfish, then
    IPMI, and stores what answered (422 when neither did)."""
    probed = await find_auto_drivers(services, [body])
    enroll = functools.partial(
        nodes.enroll_one,
        session,
        vault,
        probed.items[0],
        token.name,
        inspect=settings.inspect_on_enroll,
        note=probed.notes.get(0),
    )
    view = await run_db(session, enroll)
    return node_response(view, 201, {"Location": f"/api/v1/nodes/{view['id']}"})


@router.get(
    "",
    response_model=NodePage,
    responses=responses((400, "The cursor is not one this service handed out."), 422),
)
async def list_nodes(
    session: SessionDep,
    vault: VaultDep,
    _: Viewer,
    state: State | None = None,
    role: Slug | None = None,
    rack: RackName | None = None,
    mac: Annotated[Mac | None, Query(json_schema_extra=never_null)] = None,
    maintenance: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Nodes ordered by name, filtered, one page at a time (follow ``next_cursor``)."""
    where = nodes.NodeFilter(state and state.value, role, rack, mac, maintenance)
    listing = functools.partial(nodes.page, session, vault, where, limit=limit, cursor=cursor)
    # Inline on SQLite too (run_db): readers never wait for a lock there, and a thread
    # would not run even a page of 1,000 any sooner, only hand the GIL back and forth.
    items, next_cursor = await run_db(session, listing)
    page = NodePage.model_validate({"items": items, "next_cursor": next_cursor})
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/{ref}", response_model=NodeOut, responses=responses(404))
async def show_node(ref: NodeRef, session: SessionDep, _: Viewer) -> Response:
    def show() -> dict[str, Any]:
        return nodes.present(session, [nodes.find(session, ref)])[0]

    return node_response(await run_db(session, show))


@router.patch(
    "/{ref}",
    response_model=NodeOut,
    responses=responses(
        (400, "The body is not JSON, or If-Match is not a list of quoted entity tags."),
        403,
        404,
        _TAKEN,
        412,
        413,
        422,
    ),
)
async def change_node(
    ref: NodeRef,
    body: NodePatch,
    services: ServicesDep,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    token: Operator,
    if_match: Annotated[str | None, Header(json_schema_extra=_if_match)] = None,
) -> Response:
    """Change fields; send ``If-Match`` with the ETag you read to refuse a stale write.
    Giving a ``discovered`` node a BMC enrolls it (then it is inspected, as on POST).
    BMC driver ``auto`` probes the BMC (with the address, user and password it will
    have) for Redfish, then IPMI, and stores what answered (422 when neither did)."""

    def read() -> tuple[Node, Bmc | None]:
        node = nodes.find(session, ref)
        return node, session.get(Bmc, node.id)

    node, current = await run_db(session, read)
    patch, note = await find_patch_driver(services, vault, current, body)

    def change() -> dict[str, Any]:
        changed = nodes.change(
            session,
            vault,
            node,
            patch,
            token.name,
            if_match,
            inspect=settings.inspect_on_enroll,
            note=note,
        )
        return nodes.present(session, [changed])[0]

    return node_response(await run_db(session, change))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(403, 404, 409))
def delete_node(ref: NodeRef, session: SessionDep, token: Operator) -> None:
    nodes.remove(session, nodes.find(session, ref), token.name)


@router.post(
    "/{ref}/actions/{action}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NodeOut,
    responses=responses(400, 403, 404, 409, 413, 422),
)
def act_on_node(
    ref: NodeRef,
    action: Action,
    session: SessionDep,
    token: Operator,
    vault: VaultDep,
    settings: SettingsDep,
    body: Annotated[ActionRequest | None, Body()] = None,
) -> Response:
    """Ask for a lifecycle or power action. 409 names the actions allowed now."""
    node = nodes.act(
        session,
        nodes.find(session, ref),
        action,
        body or ActionRequest(),
        token.name,
        vault=vault,
        settings=settings,
    )
    return node_response(nodes.present(session, [node])[0], 202)


@router.get("/{ref}/wipes", response_model=list[WipeOut], responses=responses(404))
def node_wipes(ref: NodeRef, session: SessionDep, _: Viewer) -> list[WipeOut]:
    """Evidence of the node's disk wipes (method, bytes, duration, verification and
    result per disk), newest first."""
    return nodes.wipes(session, nodes.find(session, ref))


@router.get("/{ref}/events", response_model=list[EventOut], responses=responses(404))
def node_events(ref: NodeRef, session: SessionDep, _: Viewer) -> list[EventOut]:
    """The node's timeline, oldest first."""
    return nodes.events(session, nodes.find(session, ref))
