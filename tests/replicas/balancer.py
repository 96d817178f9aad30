"""A small HTTP load balancer in front of the replicas, as a site puts one in front of
its API: each request goes to the next replica in turn, and a replica that refuses the
connection is skipped. Like nginx's ``proxy_next_upstream error``, an idempotent request
(GET, HEAD) whose replica dies before answering is tried on the next one; any other
request then gets a 502, which the lab's installer retries as its curl would.

The request leaves from the address it came from (each lab machine has its own loopback
address), so the replicas see the machine's address as they would without a balancer.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tests.serving import InThread

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade"}
)
_IDEMPOTENT = frozenset({"GET", "HEAD"})


class Balancer:
    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self._turn = itertools.count()
        # Per source address: a client that sends from it. Made on the server's loop.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # requests answered, per replica URL
        self.retried = 0  # requests moved to another replica
        self.failed = 0  # requests answered 502: no replica could answer them
        # Requests a replica cut short (it died, or closed the connection while stopping)
        # once answering, or before answering a POST; retried on the next replica if
        # idempotent, unless this is False (a test that proves stopping replicas drain
        # their requests).
        self.cut = 0
        self.retry_cut = True
        self.server = InThread(self)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def _client(self, source: str) -> httpx.AsyncClient:
        client = self._clients.get(source)
        if client is None:
            # No keep-alive towards the replicas: a connection to one that was killed
            # is never reused.
            transport = httpx.AsyncHTTPTransport(
                local_address=source, limits=httpx.Limits(max_keepalive_connections=0)
            )
            client = self._clients[source] = httpx.AsyncClient(transport=transport, timeout=60)
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for client in self._clients.values():
                        await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method: str = scope["method"]
        target = scope["raw_path"].decode()
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        source = scope["client"][0] if scope.get("client") else "127.0.0.1"
        client = self._client(source)
        start = next(self._turn)
        answer: tuple[int, list[Any], bytes] | None = None
        for attempt in range(len(self.backends)):
            backend = self.backends[(start + attempt) % len(self.backends)]
            answering = False
            try:
                request = client.build_request(
                    method, backend + target, headers=headers, content=body
                )
                response = await client.send(request, stream=True)
                answering = True
                try:
                    content = b"".join([chunk async for chunk in response.aiter_raw()])
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                # A connection reset before any answer is, for a stopping replica, one the
                # kernel had queued when the replica closed its listening socket: moved
                # on, for GET and HEAD, as nginx's proxy_next_upstream does.
                reset = not answering and method in _IDEMPOTENT
                if not isinstance(exc, httpx.ConnectError) and not reset:
                    with self.lock:
                        self.cut += 1
                    if not self.retry_cut:
                        break
                if isinstance(exc, httpx.ConnectError) or method in _IDEMPOTENT:
                    with self.lock:
                        self.retried += 1
                    continue
                break
            kept = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            answer = (response.status_code, kept, content)
            with self.lock:
                self.sent[backend] += 1
            break
        if answer is None:
            with self.lock:
                self.failed += 1
            answer = (502, [(b"content-type", b"text/plain")], b"no replica answered\n")
        status, kept, content = answer
        kept.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": kept})
        await send({"type": "http.response.body", "body": content})
