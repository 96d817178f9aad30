"""The one exception services raise for a request they refuse."""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """A refusal with an HTTP status, a sentence saying what to do, and optional extra
    members (``errors``, ``allowed_actions``); the API renders it as problem+json."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra
