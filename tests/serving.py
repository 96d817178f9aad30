"""A real `provisioner serve` for tests that need one as its own process, on free
loopback ports, and the small helpers around it. Neutral ground: the lab's tests and
the boot tests both use it, and importing it loads neither pyghmi nor the lab."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InThread:
    """An ASGI app on uvicorn on a free loopback port, in a thread of the test process
    (so a test can count the process's open files or reach the app's objects)."""

    def __init__(
        self, app: Any, http: type[asyncio.Protocol] | str = "auto", log_level: str = "warning"
    ) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, http=http, host="127.0.0.1", port=self.port, log_level=log_level
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def clean_env(home: Path) -> dict[str, str]:
    """This environment without PROVISIONER_* settings, with its own HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"))
    return env


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], Any], timeout: float, what: Callable[[], object]) -> Any:
    """``check()`` until it is truthy (returned), or fail after ``timeout`` seconds with
    ``what()``: the expectation and the offending nodes."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {what()}")
        time.sleep(0.2)


class Served:
    """``provisioner serve`` in a subprocess on free loopback ports: SQLite, images and
    TFTP root in ``tmp``, embedded TFTP, a fast reconciler, no power sync. ``settings``
    are more ``PROVISIONER_*`` variables (``deploy_timeout="5"``). It can be killed and
    started again on the same data directory and ports."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        self.port, self.tftp_port = free_port(), free_udp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tftp_root = tmp / "tftp"
        tftp_root.mkdir()
        # Lab machines fetch the bootloader but never run it: any bytes will do.
        for loader in ("undionly.kpxe", "ipxe.efi"):
            (tftp_root / loader).write_bytes(os.urandom(70_000))
        self.tftp_root = tftp_root
        images = tmp / "images" / "tiny"
        self.images = images
        images.mkdir(parents=True)
        (images / "vmlinuz").write_bytes(os.urandom(64_000))
        (images / "initrd.img").write_bytes(os.urandom(128_000))
        self.env = clean_env(tmp / "home")
        self.env.update(
            PROVISIONER_DATA_DIR=str(tmp / "data"),
            PROVISIONER_IMAGES_DIR=str(tmp / "images"),
            PROVISIONER_TFTP_ENABLED="1",
            PROVISIONER_TFTP_ADDRESS="127.0.0.1",
            PROVISIONER_TFTP_PORT=str(self.tftp_port),
            PROVISIONER_TFTP_ROOT=str(tftp_root),
            PROVISIONER_BOOT_URL=self.url,
            PROVISIONER_RECONCILE_INTERVAL="0.2",
            PROVISIONER_POWER_SYNC_INTERVAL="0",
        )
        self.env.update({f"PROVISIONER_{k.upper()}": v for k, v in settings.items()})
        token = subprocess.run(
            [BIN / "provisioner", "token", "create", "--scope", "admin"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.env.update(PROVISIONER_URL=self.url, PROVISIONER_TOKEN=token)
        self.log = tmp / "service.log"
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [BIN / "provisioner", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        poll(self._ready, 60, lambda: f"the service did not become ready:\n{self.log_tail()}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the service exited ({self.process.returncode}):\n" + self.log_tail()
            )
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """A crash: SIGKILL, nothing cleaned up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=15)

    def stop(self) -> None:
        self.api.close()  # no keep-alive connection for the shutdown to wait on
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def create(self, path: str, body: dict[str, Any]) -> None:
        response = self.api.post(path, json=body)
        assert response.status_code == 201, f"POST {path}: {response.text}"
