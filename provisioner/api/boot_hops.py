"""/api/v1/boot/hops: what the boot network saw of machines no node could be found for,
for operators (the node-facing boot routes are in provisioner/api/boot.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from provisioner.api.deps import SessionDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.boot import hops
from provisioner.schemas import BootHopOut

router = APIRouter(prefix="/api/v1/boot", tags=["boot"], responses=API_ERRORS)


@router.get("/hops", response_model=list[BootHopOut], responses=responses(422))
def unknown_hops(
    session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[BootHopOut]:
    """Boot requests no node could be found for, newest first."""
    return [
        BootHopOut(
            time=row.time.isoformat(),
            client=row.client,
            mac=row.mac,
            kind=row.kind,
            detail=row.detail,
        )
        for row in hops.latest_unknown(session, limit)
    ]
