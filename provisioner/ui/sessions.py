"""Signing in to the web view: an API token, pasted once, becomes a session cookie.

The cookie holds no token. It holds, encrypted and authenticated with the service's
secret key (the :class:`~provisioner.secrets.Vault` that seals BMC passwords and page
cursors), the token's hash, the session's expiry and its CSRF secret. So any replica
reads it without a session table, a forged or altered cookie is refused, and whatever
ends the token ends its sessions too: each request looks the token up again (through the
API's token cache), so a revoked or expired token signs every session of it out.
Signing out deletes the cookie; a copy taken before keeps working until its expiry
(at most :data:`LIFETIME`), which is the price of keeping no server-side record.

Every form carries the session's CSRF secret and every POST is refused without it. The
sign-in form, before there is a session, uses a double-submitted cookie instead.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from provisioner import tokens
from provisioner.models import ApiToken
from provisioner.secrets import hash_token
from provisioner.services import Services

COOKIE = "provisioner_session"
LOGIN_COOKIE = "provisioner_login_csrf"
# A working day: an operator at a rack signs in once a shift.
LIFETIME = 8 * 3600
_SEALED = "ui session "
# Form bodies of the web view are a few fields; anything larger is not one of them.
MAX_FORM = 16 * 1024


@dataclass(frozen=True)
class Session:
    token: ApiToken
    csrf: str
    expires: int

    def may(self, scope: str) -> bool:
        return tokens.scope_allows(self.token.scope, scope)  # type: ignore[arg-type]


async def token_for(services: Services, digest: str) -> ApiToken | None:
    """The live API token with hash ``digest``, as the API's authentication finds it."""
    token = services.token_cache.get(digest)
    if token is None:
        token = await run_in_threadpool(tokens.find_by_hash, services.engine, digest)
        if token is not None:
            services.token_cache.put(digest, token)
    if token is None or not tokens.is_live(token):
        return None
    return token


async def current(request: Request) -> Session | None:
    """The request's session, if its cookie is valid and its token still live."""
    sealed = request.cookies.get(COOKIE)
    if not sealed:
        return None
    services: Services = request.app.state.services
    try:
        plain = services.vault.decrypt(sealed)
    except ValueError:
        return None
    if not plain.startswith(_SEALED):
        return None
    data = json.loads(plain.removeprefix(_SEALED))
    if data["exp"] <= time.time():
        return None
    token = await token_for(services, data["h"])
    if token is None:
        return None
    return Session(token, data["csrf"], data["exp"])


async def sign_in(request: Request, response: Response, api_token: str) -> ApiToken | None:
    """Set the session cookie for ``api_token`` on ``response``; None if it is no live
    token (nothing is set)."""
    services: Services = request.app.state.services
    digest = hash_token(api_token.strip())
    token = await token_for(services, digest)
    if token is None:
        return None
    expires = int(time.time()) + LIFETIME
    if token.expires_at is not None:
        ends = token.expires_at.replace(tzinfo=token.expires_at.tzinfo or UTC)
        expires = min(expires, int(ends.timestamp()))
    payload = {"h": digest, "exp": expires, "csrf": secrets.token_urlsafe(24)}
    sealed = services.vault.encrypt(_SEALED + json.dumps(payload))
    _set(request, response, COOKIE, sealed, expires - int(time.time()))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return token


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")


def login_csrf(request: Request) -> str:
    """The sign-in form's CSRF value: the browser's, or a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def keep_login_csrf(request: Request, response: Response, value: str) -> None:
    """Set the sign-in form's CSRF value as the cookie the POST is compared with."""
    _set(request, response, LOGIN_COOKIE, value, 3600)


def _set(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        # Secure when the browser reached the service over TLS: a cookie marked so is
        # never sent over plain HTTP, which an isolated lab network may serve.
        secure=request.url.scheme == "https",
        samesite="strict",
    )


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form body as a dict (first value of each field)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def csrf_ok(expected: str | None, fields: dict[str, Any]) -> bool:
    given = fields.get("csrf")
    return bool(expected and isinstance(given, str) and hmac.compare_digest(expected, given))
