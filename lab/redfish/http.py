"""HTTP/1.1 for the lab's Redfish BMCs: one connection served over asyncio streams with
h11 (a dependency of uvicorn, so always installed with the service), keep-alive
included, and the two ways a faulty BMC fails to answer.

Parsing is h11's; this module only moves bytes and turns events into a `Request` and a
`Response` into events, so that the Redfish side never sees HTTP framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import h11

# A BMC closes a keep-alive connection idle this long, as real ones do after a while.
IDLE_SECONDS = 60.0
# Redfish bodies are small; anything bigger is a mistake or an attack.
MAX_BODY = 1 << 20
_CHUNK = 65536


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps the last
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class Silence(enum.Enum):
    """How a request goes unanswered."""

    HANG = "hang"  # keep the connection open and never answer (a hung BMC)
    CLOSE = "close"  # close the connection without an answer (a lost request)


Handler = Callable[[Request], Awaitable[Response | Silence]]


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Handler,
    *,
    idle: float = IDLE_SECONDS,
) -> None:
    """Answer requests on one connection until the client closes it, it idles ``idle``
    seconds, a request is malformed, or ``handle`` chooses silence."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            try:
                request = await _read_request(conn, reader, writer, idle)
            except h11.RemoteProtocolError as exc:
                await _bad_request(conn, writer, exc)
                return
            if request is None:
                return
            outcome = await handle(request)
            if outcome is Silence.HANG:
                await hang(reader)
                return
            if outcome is Silence.CLOSE:
                return
            await _send(conn, writer, request, outcome)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, TimeoutError, ssl.SSLError, h11.LocalProtocolError):
        return
    finally:
        # Not waiting for the close to complete: over TLS that waits for the client's
        # close_notify, which a client keeping its pool open never sends.
        writer.close()


async def hang(reader: asyncio.StreamReader) -> None:
    """Read and ignore whatever comes until the client gives up."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(_CHUNK):
            pass


async def _read_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    idle: float,
) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            data = await asyncio.wait_for(reader.read(_CHUNK), idle)
            conn.receive_data(data)  # b"" is the end of the stream
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _request(head, bytes(body))
        else:  # ConnectionClosed, or PAUSED after a protocol switch nobody asked for
            return None


def _request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("ascii", "replace")
    path, _, query = target.partition("?")
    headers = {
        name.decode("ascii").lower(): value.decode("latin-1") for name, value in head.headers
    }
    return Request(head.method.decode("ascii"), unquote(path), query, headers, body)


async def _send(
    conn: h11.Connection, writer: asyncio.StreamWriter, request: Request, response: Response
) -> None:
    headers = [*response.headers, ("Content-Length", str(len(response.body)))]
    # One write: headers and body sent apart would leave the body to Nagle's algorithm,
    # waiting out the client's delayed ACK (40 ms on Linux) on every answer.
    parts = [conn.send(h11.Response(status_code=response.status, headers=headers))]
    if response.body and request.method != "HEAD":
        parts.append(conn.send(h11.Data(data=response.body)))
    parts.append(conn.send(h11.EndOfMessage()))
    writer.write(b"".join(p for p in parts if p))
    await writer.drain()


async def _bad_request(
    conn: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{exc}\n".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    with contextlib.suppress(h11.LocalProtocolError):
        head = conn.send(h11.Response(status_code=exc.error_status_hint, headers=headers))
        writer.write(b"".join(p for p in (head, conn.send(h11.Data(data=body))) if p))
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
