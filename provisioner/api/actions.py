"""POST /api/v1/actions: one action over a selection of nodes."""

from __future__ import annotations

from fastapi import APIRouter, status

from provisioner import bulk
from provisioner.api.deps import Operator, SessionDep, SettingsDep, VaultDep
from provisioner.api.problems import API_ERRORS, responses
from provisioner.schemas import BulkActionOut, BulkActionRequest

router = APIRouter(prefix="/api/v1/actions", tags=["nodes"], responses=API_ERRORS)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BulkActionOut,
    responses=responses(
        400, 403, (404, "A node named in the selection, or any node, is not found."), 409, 413, 422
    ),
)
def bulk_action(
    body: BulkActionRequest,
    session: SessionDep,
    token: Operator,
    vault: VaultDep,
    settings: SettingsDep,
) -> BulkActionOut:
    """Apply an action to every selected node; those the lifecycle refuses are listed
    with the reason, the others go ahead."""
    return bulk.apply(session, vault, body, token.name, settings)
