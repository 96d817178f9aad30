"""Dependencies shared by the routers: the app's services, the database session, and
bearer-token authentication with a minimum scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import tokens
from provisioner.errors import Problem
from provisioner.models import ApiToken
from provisioner.schemas import Scope
from provisioner.secrets import Vault, hash_token
from provisioner.services import Services
from provisioner.settings import Settings

T = TypeVar("T")


# Async, as every dependency here: FastAPI runs a plain ``def`` dependency in the thread
# pool, a hand-off that costs more than these attribute reads.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    # Making a Session does no I/O; the endpoint uses it in the thread pool (or inline,
    # see run_db).
    session = Session(services.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


async def get_vault(services: ServicesDep) -> Vault:
    return services.vault


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SessionDep = Annotated[Session, Depends(get_session)]
VaultDep = Annotated[Vault, Depends(get_vault)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def run_db(session: Session, call: Callable[[], T]) -> T:
    """Run ``call``, short database work on ``session``, from an async endpoint.

    On SQLite it runs right here on the event loop: its statements are tens of
    microseconds of CPU with no network round trip, less than the hand-off to a worker
    thread and back, after which the two threads would fight over the GIL on every
    request. The price: while another write transaction is open (a rack import holds one
    for a few hundred milliseconds), a write waits for SQLite's lock and so does the
    loop. On a networked database it goes to the thread pool, as a ``def`` endpoint."""
    if session.get_bind().dialect.name == "sqlite":
        return call()
    return await run_in_threadpool(call)


_bearer = HTTPBearer(auto_error=False, description="An API token: `provisioner token create`")


def require(scope: Scope) -> Callable[..., Awaitable[ApiToken]]:
    async def check(
        services: ServicesDep,
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
        cache = services.token_cache
        digest = hash_token(credentials.credentials)
        token = cache.get(digest)
        if token is None:
            token = await run_in_threadpool(tokens.find_by_hash, services.engine, digest)
            if token is not None:
                cache.put(digest, token)
        if token is None or not tokens.is_live(token):
            raise Problem(401, "The API token is unknown, revoked or expired.", headers=challenge)
        if not tokens.scope_allows(token.scope, scope):
            raise Problem(
                403, f"This needs a token with the {scope} scope; yours has {token.scope}."
            )
        return token

    return check


Viewer = Annotated[ApiToken, Depends(require("viewer"))]
Operator = Annotated[ApiToken, Depends(require("operator"))]
Admin = Annotated[ApiToken, Depends(require("admin"))]
