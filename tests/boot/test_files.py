"""GET/HEAD /boot/files: byte-exact downloads, ranges, conditional requests, confinement,
the boot-trace observer, and the X-Accel-Redirect hand-off through the real nginx."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import os
import pwd
import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.boot import files
from provisioner.settings import Settings
from provisioner.zerocopy import ZeroCopyHttpProtocol
from tests.serving import InThread, free_port

DOCS = Path(__file__).resolve().parents[2] / "docs"
REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
KERNEL = random.Random(1).randbytes(3 * files.CHUNK + 12345)  # spans chunk boundaries
INITRD = random.Random(2).randbytes(24 * 1024 * 1024)

Call = tuple[str | None, str, str, int, int, bool]


@dataclass
class Recorder:
    """A FileObserver that keeps its calls."""

    calls: list[Call]

    def __call__(self, s: files.FileServed) -> None:
        self.calls.append((s.token, s.client, s.path, s.bytes_sent, s.status, s.complete))

    def wait(self, count: int = 1, timeout: float = 10) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.calls) >= count, self.calls
        return self.calls


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images directory, a secret beside it, and symlinks both ways."""
    base = tmp_path_factory.mktemp("boot-files")
    root = base / "images"
    (root / "debian-12").mkdir(parents=True)
    (root / "debian-12" / "vmlinuz").write_bytes(KERNEL)
    (root / "debian-12" / "initrd.img").write_bytes(INITRD)
    (root / "name with space").write_bytes(b"spaced")
    (root / "empty").write_bytes(b"")
    (root / "current").symlink_to("debian-12")  # inside: allowed
    (base / "secret").write_bytes(b"not for nodes")
    (root / "escape").symlink_to(base / "secret")
    (root / "escape-dir").symlink_to(base)
    (root / "relative-escape").symlink_to("../secret")
    os.mkfifo(root / "fifo")  # opening it for reading would block without O_NONBLOCK
    return root


def make_app(images: Path, data: Path, **overrides: Any) -> tuple[FastAPI, Recorder]:
    settings = Settings(data_dir=data, reconciler=False, images_dir=images, **overrides)
    app = create_app(settings)
    recorder = Recorder([])
    observer: files.FileObserver = recorder  # mypy checks the Protocol's signature
    app.state.services.file_observer = observer
    return app, recorder


@pytest.fixture
def served(images: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Recorder]]:
    app, recorder = make_app(images, tmp_path / "data")
    with TestClient(app) as client:
        yield client, recorder


@pytest.fixture(params=["zerocopy", "body-messages"])
def live(
    images: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[InThread, Recorder]]:
    """uvicorn as `provisioner serve` runs it (sendfile), and as shipped (body messages)."""
    app, recorder = make_app(images, tmp_path / "data")
    server = InThread(app, ZeroCopyHttpProtocol if request.param == "zerocopy" else "httptools")
    yield server, recorder
    server.stop()


def raw_get(port: int, target: str) -> tuple[int, str, bytes]:
    """A GET with the request target sent exactly as given: httpx would normalise it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_back_to(count: int) -> bool:
    """The server closes its side of a connection a moment after the client does."""
    deadline = time.monotonic() + 5
    while open_fds() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return open_fds() == count


# --- downloads -------------------------------------------------------------------------


def test_full_download_is_byte_exact_with_validators(
    served: tuple[TestClient, Recorder],
) -> None:
    client, recorder = served
    response = client.get("/boot/files/debian-12/vmlinuz", params={"token": "dep-1"})
    assert response.status_code == 200
    assert response.content == KERNEL
    headers = response.headers
    assert headers["content-length"] == str(len(KERNEL))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["etag"].startswith('"')
    assert headers["last-modified"].endswith(" GMT")
    assert recorder.calls == [("dep-1", "testclient", "debian-12/vmlinuz", len(KERNEL), 200, True)]


def test_head_sends_the_headers_only(served: tuple[TestClient, Recorder]) -> None:
    client, recorder = served
    response = client.head("/boot/files/debian-12/vmlinuz")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(KERNEL))
    assert response.content == b""
    assert recorder.calls == [(None, "testclient", "debian-12/vmlinuz", 0, 200, True)]


def test_empty_file_and_symlink_inside_the_directory(served: tuple[TestClient, Recorder]) -> None:
    client, _ = served
    empty = client.get("/boot/files/empty")
    assert (empty.status_code, empty.content, empty.headers["content-length"]) == (200, b"", "0")
    assert client.get("/boot/files/current/vmlinuz").content == KERNEL


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=1000000-3000000", 1000000, 3000000),  # across chunk boundaries
        ("bytes=3000000-", 3000000, len(KERNEL) - 1),
        ("bytes=-500", len(KERNEL) - 500, len(KERNEL) - 1),
        ("bytes=-99999999", 0, len(KERNEL) - 1),  # a suffix longer than the file
        ("bytes=10-99999999", 10, len(KERNEL) - 1),
    ],
)
def test_single_ranges(
    served: tuple[TestClient, Recorder], header: str, first: int, last: int
) -> None:
    client, recorder = served
    response = client.get("/boot/files/debian-12/vmlinuz", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(KERNEL)}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.content == KERNEL[first : last + 1]
    assert recorder.calls[-1][3:] == (last - first + 1, 206, True)


@pytest.mark.parametrize(
    "header",
    [b"bytes=0-1,5-6", b"bytes=5-2", b"bytes=-", b"items=0-1", b"bytes=abc-", b"bytes=\xb2-"],
)
def test_several_or_malformed_ranges_get_the_whole_file(
    served: tuple[TestClient, Recorder], header: bytes
) -> None:
    client, _ = served
    response = client.get("/boot/files/debian-12/vmlinuz", headers={b"Range": header})
    assert response.status_code == 200
    assert response.content == KERNEL


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("debian-12/vmlinuz", f"bytes={len(KERNEL)}-"),
        ("debian-12/vmlinuz", "bytes=-0"),
        ("empty", "bytes=0-"),
        ("empty", "bytes=-1"),
    ],
)
def test_unsatisfiable_range_is_416(
    served: tuple[TestClient, Recorder], path: str, header: str
) -> None:
    client, recorder = served
    response = client.get(f"/boot/files/{path}", headers={"Range": header})
    size = len(KERNEL) if path.startswith("debian") else 0
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Range not satisfiable"
    assert recorder.calls[-1][3:] == (0, 416, True)


def test_conditional_requests(served: tuple[TestClient, Recorder]) -> None:
    client, recorder = served
    url = "/boot/files/debian-12/vmlinuz"
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]

    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", W/{etag}'},  # weak comparison
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
        {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 304, headers
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert "content-length" not in response.headers
    assert recorder.calls[-1][3:] == (0, 304, True)

    for headers in (
        {"If-None-Match": '"other"'},
        # If-None-Match wins over If-Modified-Since.
        {"If-None-Match": '"other"', "If-Modified-Since": modified},
        {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"If-Modified-Since": "not a date"},
    ):
        assert client.get(url, headers=headers).status_code == 200, headers

    ranged = {"Range": "bytes=0-9"}
    assert client.get(url, headers={**ranged, "If-Range": etag}).status_code == 206
    assert client.get(url, headers={**ranged, "If-Range": modified}).status_code == 206
    for stale in ('"other"', f"W/{etag}", "Thu, 01 Jan 1970 00:00:00 GMT", "garbage"):
        changed = client.get(url, headers={**ranged, "If-Range": stale})
        assert (changed.status_code, changed.content) == (200, KERNEL), stale


# --- confinement -----------------------------------------------------------------------


def test_missing_file_says_what_and_where(
    served: tuple[TestClient, Recorder], images: Path
) -> None:
    client, recorder = served
    response = client.get("/boot/files/debian-13/vmlinuz", params={"token": "dep-2"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "'debian-13/vmlinuz'" in detail
    assert str(images) in detail
    assert recorder.calls == [("dep-2", "testclient", "debian-13/vmlinuz", 0, 404, True)]


@pytest.mark.parametrize(
    "path",
    [
        "escape",
        "escape-dir/secret",
        "relative-escape",
        "debian-12",  # a directory
        "fifo",
        "",
        "debian-12/",
    ],
)
def test_symlinks_out_and_non_files_are_404(served: tuple[TestClient, Recorder], path: str) -> None:
    client, _ = served
    response = client.get(f"/boot/files/{path}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert b"not for nodes" not in response.content


TRAVERSALS = [
    "/boot/files/../secret",
    "/boot/files/debian-12/../../secret",
    "/boot/files/%2e%2e/secret",
    "/boot/files/%2E%2E/secret",
    "/boot/files/..%2fsecret",
    "/boot/files/debian-12%2f..%2f..%2fsecret",
    "/boot/files/%2fetc%2fpasswd",
    "/boot/files//etc/passwd",
    "/boot/files/..%5csecret",
    "/boot/files/debian-12%5cvmlinuz",
    "/boot/files/debian-12/vmlinuz%00",
    "/boot/files/./debian-12/vmlinuz",
    "/boot/files/debian-12//vmlinuz",
]


def test_traversal_attempts_are_404_and_open_nothing_outside(
    live: tuple[InThread, Recorder], images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, recorder = live
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    for target in TRAVERSALS:
        status, content_type, body = raw_get(server.port, target)
        assert status == 404, target
        assert content_type == "application/problem+json", target
        assert b"not for nodes" not in body
        assert b"root:" not in body
    assert opened == []  # all refused before anything was opened
    assert raw_get(server.port, "/boot/files/current/vmlinuz")[0] == 200
    assert opened == [os.path.join(os.path.realpath(images), "debian-12", "vmlinuz")]
    assert len(recorder.wait(len(TRAVERSALS) + 1)) == len(TRAVERSALS) + 1


@pytest.mark.parametrize(
    "refusal", [BlockingIOError(errno.EAGAIN, "not cached"), OSError(errno.EOPNOTSUPP, "tmpfs")]
)
def test_reads_the_page_cache_cannot_serve_go_to_a_thread(
    images: Path, monkeypatch: pytest.MonkeyPatch, refusal: OSError
) -> None:
    def refuse(fd: int, offset: int, size: int) -> bytearray:
        raise refusal

    monkeypatch.setattr(files, "_read_cached", refuse)
    file = files.BootFile.open(images, "debian-12/vmlinuz")
    try:
        assert asyncio.run(file.read(5, 1000)) == KERNEL[5:1005]
        assert file.nowait is (refusal.errno == errno.EAGAIN)  # tmpfs: stop asking
    finally:
        file.close()


# --- a real socket ---------------------------------------------------------------------


def test_large_downloads_over_uvicorn_are_byte_exact(live: tuple[InThread, Recorder]) -> None:
    server, recorder = live
    url = f"{server.url}/boot/files/debian-12/initrd.img"
    fds = open_fds()
    with httpx.Client(timeout=30) as client:
        whole = client.get(url, params={"token": "dep-3"})
        assert hashlib.sha256(whole.content).digest() == hashlib.sha256(INITRD).digest()
        middle = client.get(url, headers={"Range": "bytes=5000000-20000000"})
        assert middle.status_code == 206
        assert middle.content == INITRD[5000000:20000001]
        tail = client.get(url, headers={"Range": "bytes=-3000000"})
        assert tail.content == INITRD[-3000000:]
    calls = recorder.wait(3)
    assert calls[0] == ("dep-3", "127.0.0.1", "debian-12/initrd.img", len(INITRD), 200, True)
    assert [c[3:] for c in calls[1:]] == [(15000001, 206, True), (3000000, 206, True)]
    assert fds_back_to(fds)


def test_client_going_away_stops_the_download_and_closes_the_file(
    live: tuple[InThread, Recorder],
) -> None:
    server, recorder = live
    fds = open_fds()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # A small receive buffer, so the server is soon waiting on back-pressure.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            b"GET /boot/files/debian-12/initrd.img?token=dep-4 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    [call] = recorder.wait(1)
    token, _, path, sent, status, complete = call
    assert (token, path, status, complete) == ("dep-4", "debian-12/initrd.img", 200, False)
    assert sent < len(INITRD) // 2
    assert fds_back_to(fds)


# --- X-Accel-Redirect ------------------------------------------------------------------


def test_accel_redirect_mode_authorises_and_sends_no_body(images: Path, tmp_path: Path) -> None:
    app, recorder = make_app(images, tmp_path / "data", accel_redirect="/_boot_files/")
    with TestClient(app) as client:
        response = client.get("/boot/files/debian-12/vmlinuz", params={"token": "dep-5"})
        assert response.status_code == 200
        assert response.headers["x-accel-redirect"] == "/_boot_files/debian-12/vmlinuz"
        assert response.content == b""
        spaced = client.get("/boot/files/name with space")
        assert spaced.headers["x-accel-redirect"] == "/_boot_files/name%20with%20space"
        for path in ("debian-13/vmlinuz", "escape", "debian-12", "%2e%2e/secret"):
            refused = client.get(f"/boot/files/{path}")
            assert refused.status_code == 404, path
            assert "x-accel-redirect" not in refused.headers
    assert recorder.calls[0] == ("dep-5", "testclient", "debian-12/vmlinuz", 0, 200, True)


def nginx_path() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but nginx is not installed")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return path


def render_snippet(listen: int, service: int, images: Path) -> str:
    """docs/nginx-provisioner.conf with its example values replaced: the very text the
    documentation shows, which must stay the same."""
    snippet = (DOCS / "nginx-provisioner.conf").read_text()
    assert snippet in (DOCS / "nginx.md").read_text(), "docs/nginx.md must show the snippet"
    for example, value in (
        ("listen 80;", f"listen 127.0.0.1:{listen};"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{service};"),
        ("alias /var/lib/provisioner/images/;", f"alias {images}/;"),
    ):
        assert snippet.count(example) == 1, example
        snippet = snippet.replace(example, value)
    return snippet


@pytest.fixture
def nginx_front(images: Path, tmp_path: Path) -> Iterator[tuple[str, Recorder]]:
    """The real nginx, configured by the documented snippet, in front of the service."""
    binary = nginx_path()
    app, recorder = make_app(images, tmp_path / "data", accel_redirect="/_boot_files/")
    service = InThread(app)
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    user = pwd.getpwuid(os.getuid()).pw_name
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (prefix / "nginx.conf").write_text(
        f"user {user};\nevents {{}}\nhttp {{\n{temp}\n"
        f"    uwsgi_temp_path {prefix}/uwsgi;\n    scgi_temp_path {prefix}/scgi;\n"
        f"    access_log {prefix}/access.log;\n"
        f"{render_snippet(port, service.port, images)}}}\n"
    )
    process = subprocess.Popen(
        [
            binary,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-g",
            f"daemon off; pid {prefix}/nginx.pid; error_log stderr;",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "nginx did not listen in 10 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", recorder
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
        service.stop()
    assert "[emerg]" not in output, output
    assert "[alert]" not in output, output


def test_nginx_serves_the_files_the_service_authorises(
    nginx_front: tuple[str, Recorder],
) -> None:
    url, recorder = nginx_front
    with httpx.Client(base_url=url, timeout=30) as client:
        whole = client.get("/boot/files/debian-12/initrd.img", params={"token": "dep-6"})
        assert whole.status_code == 200
        assert whole.content == INITRD
        assert "x-accel-redirect" not in whole.headers
        assert whole.headers["content-type"] == "application/octet-stream"

        ranged = client.get("/boot/files/debian-12/vmlinuz", headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206
        assert ranged.headers["content-range"] == f"bytes 100-199/{len(KERNEL)}"
        assert ranged.content == KERNEL[100:200]
        cached = client.get(
            "/boot/files/debian-12/vmlinuz", headers={"If-None-Match": ranged.headers["etag"]}
        )
        assert cached.status_code == 304

        assert client.get("/boot/files/name with space").content == b"spaced"
        missing = client.get("/boot/files/debian-13/vmlinuz")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # The internal location is not reachable from outside.
        assert client.get("/_boot_files/debian-12/vmlinuz").status_code == 404
        # Everything else reaches the service.
        assert client.get("/healthz").json() == {"status": "ok"}

    port = int(url.rsplit(":", 1)[1])
    for target in [*TRAVERSALS, "/boot/files/escape", "/_boot_files/../secret"]:
        status, _, body = raw_get(port, target)
        assert status in (400, 404), target
        assert b"not for nodes" not in body, target
    assert recorder.calls[0] == ("dep-6", "127.0.0.1", "debian-12/initrd.img", 0, 200, True)


def test_openapi_documents_get_and_head(served: tuple[TestClient, Recorder]) -> None:
    client, _ = served
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of duplicate operation ids
        spec = client.get("/openapi.json").json()
    operations = spec["paths"]["/boot/files/{path}"]
    assert set(operations) == {"get", "head"}
    assert "application/problem+json" in operations["get"]["responses"]["404"]["content"]
