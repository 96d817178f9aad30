"""/api/v1/racks/import: enroll a whole rack from a manifest, all rows or none."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import manifest, nodes
from provisioner.api.deps import Operator, ServicesDep, SessionDep, SettingsDep, VaultDep
from provisioner.api.problems import API_ERRORS, responses
from provisioner.errors import Problem
from provisioner.nodes.auto_driver import find_auto_drivers
from provisioner.schemas import ImportResult, NodeCreate
from provisioner.secrets import Vault

router = APIRouter(prefix="/api/v1/racks", tags=["racks"], responses=API_ERRORS)

_MANIFEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "A rack manifest (see docs/rack-manifest.md).",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=ImportResult,
    openapi_extra=_MANIFEST_BODY,
    responses=responses(
        403,
        (409, "A row's name, MAC, rack position or BMC is another node's; nothing was imported."),
        413,
        415,
        (422, "The manifest has errors, listed by row in `errors`; nothing was imported."),
    ),
)
async def import_rack(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    token: Operator,
) -> Response:
    """Enroll every node of a YAML or CSV manifest; a bad row rejects the whole manifest.
    A row naming the MAC of a ``discovered`` node adopts that node (same id, timeline
    kept) instead of conflicting with it."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in manifest.YAML_TYPES | manifest.CSV_TYPES:
        raise Problem(415, "Send the manifest as application/yaml or text/csv.")
    body = await request.body()
    # Parsing and inserting a thousand rows takes a while: keep the event loop free.
    items = await run_in_threadpool(_parse, body, media_type)
    # Rows with bmc_driver auto are probed (concurrently) before anything is written.
    probed = await find_auto_drivers(services, items, rows=True)
    return await run_in_threadpool(
        _import, probed.items, probed.notes, session, vault, token.name, settings.inspect_on_enroll
    )


def _parse(body: bytes, media_type: str) -> list[NodeCreate]:
    try:
        return manifest.parse_manifest(body, media_type)
    except manifest.ManifestError as exc:
        raise Problem(
            422,
            f"The manifest has {len(exc.errors)} error(s); nothing was imported.",
            errors=exc.errors,
        ) from None


def _import(
    items: list[NodeCreate],
    notes: dict[int, str],
    session: Session,
    vault: Vault,
    actor: str,
    inspect: bool,
) -> Response:
    enrolled = nodes.enroll(
        session, vault, items, actor, "imported from a rack manifest", inspect=inspect, notes=notes
    )
    result = ImportResult.model_validate(
        {
            "created": len(enrolled.nodes) - enrolled.adopted,
            "adopted": enrolled.adopted,
            "nodes": enrolled.nodes,
        }
    )
    return Response(result.model_dump_json(), status_code=201, media_type="application/json")
