"""API tokens: creation, lookup by hash, scopes.

Scopes are ordered: a viewer reads, an operator also acts on nodes and racks, an admin
also manages tokens, roles and images.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from provisioner.errors import Problem
from provisioner.models import ApiToken, utcnow
from provisioner.schemas import Scope
from provisioner.secrets import hash_token, new_token

SCOPE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


def scope_allows(granted: str, needed: Scope) -> bool:
    return SCOPE_RANK.get(granted, -1) >= SCOPE_RANK[needed]


def create_token(
    session: Session, *, name: str, scope: Scope, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the token itself (shown once)."""
    token = new_token()
    row = ApiToken(
        name=name,
        scope=scope,
        token_hash=hash_token(token),
        prefix=token[:12],
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, token


def find_by_hash(engine: Engine, digest: str) -> ApiToken | None:
    """The stored token whose hash is ``digest``, expired or not, read in a session of
    its own: authentication runs before, and apart from, the request's session."""
    with Session(engine, expire_on_commit=False) as session:
        return session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()


def listing(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.created_at))))


def revoke(session: Session, cache: TokenCache, token_id: uuid.UUID) -> None:
    """Delete the token; this process stops honouring it at once (see :class:`TokenCache`).

    The last live admin token stays: without one, no one could manage tokens, roles or
    images through the API again."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise Problem(404, f"No token has the id {token_id}.")
    if row.scope == "admin" and is_live(row) and not _other_live_admin(session, token_id):
        raise Problem(
            409,
            "This is the last admin token that has not expired: create another first "
            "(`provisioner token create --scope admin`), then revoke this one.",
        )
    session.delete(row)
    session.commit()
    cache.forget(token_id)


def _other_live_admin(session: Session, token_id: uuid.UUID) -> bool:
    # Locked on PostgreSQL, so that two admins revoking each other's tokens at once
    # cannot both pass.
    admins = session.exec(
        select(ApiToken).where(ApiToken.scope == "admin", ApiToken.id != token_id).with_for_update()
    )
    return any(is_live(admin) for admin in admins)


def is_live(row: ApiToken) -> bool:
    if row.expires_at is None:
        return True
    expires = row.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive UTC
        expires = expires.replace(tzinfo=UTC)
    return expires > utcnow()


class TokenCache:
    """Tokens seen in the last ``ttl`` seconds, by hash, so that most requests skip the
    database. A token revoked through this process stops working at once; one revoked
    through another replica stops working here within ``ttl`` seconds."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, ApiToken]] = {}

    def get(self, digest: str) -> ApiToken | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, row: ApiToken) -> None:
        if len(self._entries) > 10_000:  # a flood of distinct tokens must not grow it forever
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, row)

    def forget(self, token_id: uuid.UUID) -> None:
        for digest, (_, row) in list(self._entries.items()):
            if row.id == token_id:
                del self._entries[digest]
