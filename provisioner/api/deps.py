"""Dependencies shared by the routers: the database session, the secret vault, and
bearer-token authentication with a minimum scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from provisioner.errors import Problem
from provisioner.models import ApiToken
from provisioner.schemas import Scope
from provisioner.secrets import Vault, hash_token
from provisioner.settings import Settings
from provisioner.tokens import TokenCache, is_live, scope_allows

T = TypeVar("T")


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Async so that FastAPI does not spend a thread-pool hand-off on it: making a Session
    # does no I/O; the endpoint uses it in the thread pool (or inline, see run_db).
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


# Async, like get_session: FastAPI runs a plain ``def`` dependency in the thread pool, a
# hand-off that costs more than these attribute reads.
async def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


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


SessionDep = Annotated[Session, Depends(get_session)]
VaultDep = Annotated[Vault, Depends(get_vault)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API token: `provisioner token create`")


def _lookup(engine: Engine, digest: str) -> ApiToken | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()


def require(scope: Scope) -> Callable[..., Awaitable[ApiToken]]:
    async def check(
        request: Request,
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
        cache: TokenCache = request.app.state.token_cache
        digest = hash_token(credentials.credentials)
        token = cache.get(digest)
        if token is None:
            token = await run_in_threadpool(_lookup, request.app.state.engine, digest)
            if token is not None:
                cache.put(digest, token)
        if token is None or not is_live(token):
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
