"""Redfish sessions of one BMC (SessionService): created by a POST with the user's name
and password, used through ``X-Auth-Token``, ended by a DELETE of the session or by
idling longer than the session timeout. Like a real BMC's, the table is bounded: a new
session beyond the limit pushes out the least recently used one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_SESSIONS = 64


@dataclass
class Session:
    ident: str
    token: str
    username: str
    created: datetime
    last_used: float  # time.monotonic()


class Sessions:
    def __init__(self, timeout: float, limit: int = MAX_SESSIONS) -> None:
        self.timeout = timeout
        self._limit = limit
        self._by_id: dict[str, Session] = {}
        self._by_token: dict[str, Session] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[str]:
        self._expire()
        return list(self._by_id)

    def create(self, username: str) -> Session:
        self._expire()
        if len(self._by_id) >= self._limit:
            self._drop(min(self._by_id.values(), key=lambda s: s.last_used))
        self._counter += 1
        session = Session(
            ident=str(self._counter),
            token=secrets.token_hex(16),
            username=username,
            created=datetime.now(UTC),
            last_used=time.monotonic(),
        )
        self._by_id[session.ident] = session
        self._by_token[session.token] = session
        return session

    def by_token(self, token: str) -> Session | None:
        """The session ``token`` belongs to, kept alive by this use; None if there is
        none or it expired."""
        self._expire()
        session = self._by_token.get(token)
        if session is not None:
            session.last_used = time.monotonic()
        return session

    def get(self, ident: str) -> Session | None:
        self._expire()
        return self._by_id.get(ident)

    def delete(self, ident: str) -> bool:
        session = self._by_id.get(ident)
        if session is None:
            return False
        self._drop(session)
        return True

    def clear(self) -> None:
        self._by_id.clear()
        self._by_token.clear()

    def _expire(self) -> None:
        oldest = time.monotonic() - self.timeout
        for session in [s for s in self._by_id.values() if s.last_used < oldest]:
            self._drop(session)

    def _drop(self, session: Session) -> None:
        self._by_id.pop(session.ident, None)
        self._by_token.pop(session.token, None)
