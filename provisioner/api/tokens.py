"""/api/v1/tokens: admins create, list and revoke API tokens."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status
from sqlmodel import col, select

from provisioner import tokens
from provisioner.api.deps import Admin, SessionDep
from provisioner.errors import Problem
from provisioner.models import ApiToken
from provisioner.schemas import TokenCreated, TokenIn, TokenOut

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.get("", response_model=list[TokenOut])
def list_tokens(session: SessionDep, _: Admin) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.created_at))))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenIn, session: SessionDep, _: Admin) -> TokenCreated:
    """The token is in this response only; the service keeps just its hash."""
    row, token = tokens.create_token(
        session, name=body.name, scope=body.scope, expires_in_days=body.expires_in_days
    )
    return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=token)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def revoke_token(token_id: uuid.UUID, request: Request, session: SessionDep, _: Admin) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise Problem(404, f"No token has the id {token_id}.")
    session.delete(row)
    session.commit()
    request.app.state.token_cache.forget(token_id)
