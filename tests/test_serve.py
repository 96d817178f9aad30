"""`provisioner serve` with zero configuration, as a real process on a real socket."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import clean_env, free_port

PROVISIONER = str(Path(sys.executable).parent / "provisioner")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path, dict[str, str]]]:
    """The service started from an empty directory with no settings at all."""
    port = free_port()
    env = clean_env(tmp_path / "home")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    process = subprocess.Popen(
        [PROVISIONER, "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "service did not become ready in 30 s"
            time.sleep(0.1)
        yield port, workdir, env
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_zero_config_serve_creates_database_and_private_key(
    served: tuple[int, Path, dict[str, str]],
) -> None:
    port, workdir, env = served
    data = Path(env["XDG_DATA_HOME"]) / "provisioner"
    assert (data / "provisioner.db").is_file()
    key = data / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert list(workdir.iterdir()) == []

    unauthorized = httpx.get(f"http://127.0.0.1:{port}/api/v1/nodes")
    assert unauthorized.status_code == 401

    # An offline token for the same database works against the running service.
    created = subprocess.run(
        [PROVISIONER, "token", "create", "--scope", "viewer"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip()
    assert created.stdout == token + "\n"
    listed = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}
    )
    assert listed.json() == {"items": [], "next_cursor": None}


def test_token_create_migrates_a_missing_database(tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), "PROVISIONER_DATA_DIR": str(tmp_path / "fresh")}
    created = subprocess.run(
        [PROVISIONER, "token", "create", "--scope", "admin", "--name", "first"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert created.stdout.startswith("prov_")
    assert (tmp_path / "fresh" / "provisioner.db").is_file()
