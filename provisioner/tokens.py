"""API tokens: creation, lookup by hash, scopes.

Scopes are ordered: a viewer reads, an operator also acts on nodes and racks, an admin
also manages tokens, roles and images.
"""

from __future__ import annotations

from datetime import timedelta

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
    if row is None:
        return None
    if row.expires_at is not None:
        expires = row.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=utcnow().tzinfo)
        if expires <= utcnow():
            return None
    return row
