"""/api/v1/tokens: admins create, list and revoke API tokens."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from provisioner import tokens
from provisioner.api.deps import Admin, ServicesDep, SessionDep
from provisioner.api.problems import API_ERRORS, responses
from provisioner.models import ApiToken
from provisioner.schemas import TokenCreated, TokenIn, TokenOut

router = APIRouter(
    prefix="/api/v1/tokens", tags=["tokens"], responses={**API_ERRORS, **responses(403)}
)


@router.get("", response_model=list[TokenOut])
def list_tokens(session: SessionDep, _: Admin) -> list[ApiToken]:
    return tokens.listing(session)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses=responses(400, 413, 422),
)
def create_token(body: TokenIn, session: SessionDep, _: Admin) -> TokenCreated:
    """The token is in this response only; the service keeps just its hash."""
    row, token = tokens.create_token(
        session, name=body.name, scope=body.scope, expires_in_days=body.expires_in_days
    )
    return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=token)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, (409, "It is the last admin token."), 422),
)
def revoke_token(token_id: uuid.UUID, session: SessionDep, services: ServicesDep, _: Admin) -> None:
    tokens.revoke(session, services.token_cache, token_id)
