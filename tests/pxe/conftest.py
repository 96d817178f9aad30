"""A TFTP server running on its own event loop thread, so real clients (curl, tftp-hpa as
subprocesses), raw sockets and the lab's asyncio client can all talk to it from tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pxe.tftp import TftpServer, Transfer

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
IPXE = Path("/usr/lib/ipxe")
BINARIES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
SECRET = b"outside the root: never served\n"

T = TypeVar("T")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but {name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


class ServerThread:
    """TftpServer on a loop of its own; finished transfers are collected in order."""

    def __init__(self, root: Path, host: str = "127.0.0.1", **kwargs: Any) -> None:
        self.transfers: list[Transfer] = []
        self.hook: Callable[[Transfer], None] | None = None
        self._changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = TftpServer(root, observer=self._observe, **kwargs)
        self.call(self.server.start(host, 0))
        self.port = self.server.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _observe(self, transfer: Transfer) -> None:
        with self._changed:
            self.transfers.append(transfer)
            self._changed.notify_all()
        if self.hook is not None:
            self.hook(transfer)

    def wait_transfers(self, count: int, timeout: float = 10) -> list[Transfer]:
        with self._changed:
            done = self._changed.wait_for(lambda: len(self.transfers) >= count, timeout)
            assert done, f"{len(self.transfers)} transfers finished, expected {count}"
            return list(self.transfers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.server.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def boot_root(tmp_path: Path) -> Path:
    """The iPXE binaries, an inner symlink, a subdirectory, and escapes to a secret file
    and a directory outside the root."""
    root = tmp_path / "root"
    root.mkdir()
    for name in BINARIES:
        if not (IPXE / name).exists():
            pytest.skip(f"{IPXE / name} is missing (apt-get install ipxe)")
        shutil.copyfile(IPXE / name, root / name)  # follows ipxe.efi's symlink
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (root / "escape").symlink_to(outside / "secret")
    (root / "escape-dir").symlink_to(outside)
    (root / "alias.kpxe").symlink_to("undionly.kpxe")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    return root


@pytest.fixture
def make_server(boot_root: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(host: str = "127.0.0.1", **kwargs: Any) -> ServerThread:
        running = ServerThread(boot_root, host, **kwargs)
        started.append(running)
        return running

    yield make
    for running in started:
        running.close()


@pytest.fixture
def tftp(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


class RawClient:
    """A UDP socket speaking TFTP by hand, for what real clients would never send."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(3)

    def send(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(packet, addr)

    def recv(self, timeout: float = 3) -> tuple[bytes, tuple[str, int]]:
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(70000)
        return data, addr

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def make(host: str = "127.0.0.1") -> RawClient:
        client = RawClient(host)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
