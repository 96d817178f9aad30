"""A private PostgreSQL cluster for the replica tests: its own data directory and a free
loopback port, made with the server's own ``initdb`` and ``pg_ctl``, so a test owns the
whole server (it can stop and start it) and shares nothing with the other PostgreSQL
tests' database.

Run as root (CI), the server runs as the ``postgres`` user, as Debian's packaged clusters
do: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.serving import free_port

POSTGRES_URL = os.environ.get("PROVISIONER_TEST_DATABASE_URL")
POSTGRES_REQUIRED = os.environ.get("PROVISIONER_REQUIRE_POSTGRES") == "1"


def server_bin() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/N/bin)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def need_postgres() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are; skips (fails in CI) when PostgreSQL tests are
    off or the server is not installed."""
    if not (POSTGRES_URL or POSTGRES_REQUIRED):
        pytest.skip("PostgreSQL tests need PROVISIONER_TEST_DATABASE_URL")
    found = server_bin()
    if found is None or not (found / "initdb").exists():
        message = "the PostgreSQL server programs (initdb, pg_ctl) are not installed"
        if POSTGRES_REQUIRED:
            pytest.fail(f"PROVISIONER_REQUIRE_POSTGRES=1 but {message}")
        pytest.skip(message)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs a postgres user to run the server as")
    return found


class Cluster:
    """``initdb`` into a fresh directory, then a server on a free 127.0.0.1 port with one
    database and a password-protected owner; :attr:`url` is the service's URL for it."""

    USER = "provisioner"
    DATABASE = "provisioner"

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        # Not under pytest's tmp_path: the server's user must be able to enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="provisioner-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        password = secrets.token_hex(16)
        self.url = (
            f"postgresql+psycopg://{self.USER}:{password}@127.0.0.1:{self.port}/{self.DATABASE}"
        )
        pwfile = self.dir / "pwfile"
        pwfile.write_text(password + "\n")
        self._as_server_user()
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        self.start()
        self._run(
            "psql",
            "-h",
            str(self.dir),
            "-p",
            str(self.port),
            "-U",
            self.USER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CREATE DATABASE {self.DATABASE}",
            env={"PGPASSWORD": password},
        )

    def _as_server_user(self) -> None:
        if os.geteuid() == 0:
            server = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, server.pw_uid, server.pw_gid)

    def _run(self, program: str, *args: str, env: dict[str, str] | None = None) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            cwd="/",  # the server's user may not enter the current directory
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{program} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                + self.log_tail()
            )

    def start(self) -> None:
        options = " ".join(
            (
                f"-p {self.port}",
                f"-k {self.dir}",  # its Unix socket, beside the data directory
                "-c listen_addresses=127.0.0.1",
                "-c max_connections=300",
                # A throwaway server: durability across an OS crash is not wanted.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            )
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
