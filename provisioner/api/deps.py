"""Dependencies shared by the routers: the database session, the secret vault, and
bearer-token authentication with a minimum scope."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from provisioner.errors import Problem
from provisioner.models import ApiToken
from provisioner.schemas import Scope
from provisioner.secrets import Vault
from provisioner.tokens import find_token, scope_allows


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


SessionDep = Annotated[Session, Depends(get_session)]
VaultDep = Annotated[Vault, Depends(get_vault)]

_bearer = HTTPBearer(auto_error=False, description="An API token: `provisioner token create`")


def require(scope: Scope) -> Callable[..., ApiToken]:
    def check(
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise Problem(
                401,
                "This endpoint needs an API token: send 'Authorization: Bearer <token>' "
                "(create one with `provisioner token create`).",
                headers=challenge,
            )
        token = find_token(session, credentials.credentials)
        if token is None:
            raise Problem(401, "The API token is unknown, revoked or expired.", headers=challenge)
        if not scope_allows(token.scope, scope):
            raise Problem(
                403, f"This needs a token with the {scope} scope; yours has {token.scope}."
            )
        return token

    return check


Viewer = Annotated[ApiToken, Depends(require("viewer"))]
Operator = Annotated[ApiToken, Depends(require("operator"))]
Admin = Annotated[ApiToken, Depends(require("admin"))]
