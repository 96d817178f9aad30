"""The ASGI zero-copy send extension of ZeroCopyHttpProtocol, on a real uvicorn socket:
the spec's defaults, Content-Length checks, keep-alive after a sendfile, a client that
leaves mid-file, and that boot files really go through sendfile when cached and through
reads when not."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.boot import files
from provisioner.zerocopy import EXTENSION, ClientDisconnected, ZeroCopyHttpProtocol
from tests.serving import InThread

DATA = random.Random(7).randbytes(5 * 1024 * 1024 + 333)

Handler = Callable[[Any, Any], Awaitable[None]]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], InThread]]:
    """Serves one handler, given the scope and send, for every request."""
    started: list[InThread] = []

    def start(handler: Handler) -> InThread:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                await handler(scope, send)

        started.append(InThread(app, http=ZeroCopyHttpProtocol, log_level="error"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def start(length: int) -> dict[str, Any]:
    headers = [(b"content-length", str(length).encode())]
    return {"type": "http.response.start", "status": 200, "headers": headers}


def test_the_extension_is_offered_and_sends_a_whole_file_by_default(
    serve: Callable[[Handler], InThread], data_file: Path
) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(scope: Any, send: Any) -> None:
        seen.append(scope.get("extensions", {}))
        with data_file.open("rb") as file:
            await send(start(len(DATA)))
            await send({"type": EXTENSION, "file": file})  # no offset, no count

    server = serve(handler)
    with httpx.Client(timeout=10) as client:
        for _ in range(3):  # the same kept-alive connection each time
            response = client.get(server.url)
            assert response.content == DATA
    assert seen == [{EXTENSION: {}}] * 3


def test_offsets_counts_and_body_messages_mix_in_one_response(
    serve: Callable[[Handler], InThread], data_file: Path
) -> None:
    async def handler(scope: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            file.seek(1000)  # no offset given: from the file's position
            await send(start(100 + 2000 + 5 + 3_000_000))
            await send({"type": "http.response.body", "body": DATA[:100], "more_body": True})
            await send({"type": EXTENSION, "file": file, "count": 2000, "more_body": True})
            await send({"type": "http.response.body", "body": b"-----", "more_body": True})
            await send({"type": EXTENSION, "file": file, "offset": 7, "count": 3_000_000})

    server = serve(handler)
    response = httpx.get(server.url, timeout=10)
    assert response.content == DATA[:100] + DATA[1000:3000] + b"-----" + DATA[7:3_000_007]


def test_a_count_past_the_content_length_is_refused_before_sending(
    serve: Callable[[Handler], InThread], data_file: Path
) -> None:
    errors: list[Exception] = []

    async def handler(scope: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            await send(start(10))
            try:
                await send({"type": EXTENSION, "file": file, "offset": 0, "count": 11})
            except RuntimeError as exc:
                errors.append(exc)
            await send({"type": EXTENSION, "file": file, "offset": 0, "count": 10})

    server = serve(handler)
    assert httpx.get(server.url, timeout=10).content == DATA[:10]
    assert [str(e) for e in errors] == ["Response content longer than Content-Length"]


def test_head_sends_the_headers_only(serve: Callable[[Handler], InThread], data_file: Path) -> None:
    async def handler(scope: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            await send(start(len(DATA)))
            await send({"type": EXTENSION, "file": file})

    server = serve(handler)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < len(DATA) + 200:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {len(DATA)}".encode() in head
    assert rest.startswith(b"HTTP/1.1 200")  # the pipelined GET, right after: no HEAD body
    assert rest.partition(b"\r\n\r\n")[2] == DATA


def test_a_client_leaving_mid_file_makes_the_send_raise(
    serve: Callable[[Handler], InThread], data_file: Path
) -> None:
    finished = threading.Event()
    raised: list[Exception] = []

    async def handler(scope: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            await send(start(len(DATA)))
            try:
                await send({"type": EXTENSION, "file": file})
            except ClientDisconnected as exc:
                raised.append(exc)
        finished.set()

    server = serve(handler)
    fds = len(os.listdir("/proc/self/fd"))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert finished.wait(10), "the send never returned after the client left"
    assert len(raised) == 1
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds  # the duplicate descriptor is closed


@pytest.fixture
def boot_server(tmp_path: Path) -> Iterator[InThread]:
    images = tmp_path / "images"
    images.mkdir()
    (images / "initrd.img").write_bytes(DATA)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        file = files.BootFile.open(images, "initrd.img")
        selection = files.Selection(200, 0, file.size)
        await files.BootFileResponse(file, selection, lambda *_: None)(scope, receive, send)

    server = InThread(app, http=ZeroCopyHttpProtocol, log_level="error")
    yield server
    server.stop()


def test_cached_boot_files_go_through_sendfile_not_reads(
    boot_server: InThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_reads(self: files.BootFile, offset: int, size: int) -> bytes:
        raise AssertionError("read through Python although the page cache had it")

    monkeypatch.setattr(files.BootFile, "read", no_reads)
    assert httpx.get(boot_server.url, timeout=10).content == DATA


def test_boot_file_spans_not_in_the_page_cache_are_read_in_a_thread(
    boot_server: InThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first slice "misses" the page cache, the rest hit it: one response, both paths.
    probes: list[int] = []
    sendfiles: list[int] = []

    def cached(self: files.BootFile, offset: int, size: int) -> bool:
        probes.append(offset)
        return offset > 0

    real_sendfile = os.sendfile

    def sendfile(out: int, source: int, offset: int | None, count: int) -> int:
        sent = real_sendfile(out, source, offset, count)
        sendfiles.append(sent)
        return sent

    monkeypatch.setattr(files.BootFile, "cached", cached)
    monkeypatch.setattr(os, "sendfile", sendfile)
    assert httpx.get(boot_server.url, timeout=10).content == DATA
    assert probes[0] == 0
    assert len(probes) > 1
    assert sendfiles  # the cached rest went out with sendfile
    assert sum(sendfiles) == len(DATA) - files.CHUNK  # all but the first chunk
