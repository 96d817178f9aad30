"""Refuse request bodies over the configured size before they are read into memory."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner.api.problems import problem_response


@dataclass
class BodySizeLimit:
    """ASGI middleware: a request whose body would pass ``max_bytes`` gets a 413."""

    app: ASGIApp
    max_bytes: int

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif _declared_length(scope) > self.max_bytes:
            await problem_response(413, self._detail())(scope, receive, send)
        else:
            # Chunked bodies declare no length: count them and stop as they overflow.
            await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        return counting_receive

    def _detail(self) -> str:
        return (
            f"The request body is larger than {self.max_bytes} bytes; split a large "
            "manifest into one file per rack."
        )


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length, or 0 when it gives none (or none that is a number)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0
