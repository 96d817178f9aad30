"""API tokens: creation, lookup by hash, scopes.

Scopes are ordered: a viewer reads, an operator also acts on nodes and racks, an admin
also manages tokens, roles and images.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, timedelta

from sqlmodel import Session, select

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


def find_token(session: Session, token: str) -> ApiToken | None:
    """The live token matching ``token``, or None if unknown or expired."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    return row if row is not None and is_live(row) else None


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
