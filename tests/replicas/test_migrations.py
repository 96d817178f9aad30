"""Schema migrations with several replicas, as real processes on a private PostgreSQL:

- three ``provisioner serve`` replicas and a ``provisioner db upgrade`` started at once on
  an empty database: all four wait on the migrations' advisory lock (the test holds it
  until they do, so that they race for it at the same moment), all four succeed, and
  the schema is made once: one process says it migrated, the others find nothing to
  do;
- ``provisioner db upgrade`` run while replicas serve waits for a migration already under
  way (the test holds the lock, as a replica migrating would) and finishes once it is
  released, while the serving replicas keep answering.
"""

from __future__ import annotations

import functools
import re
import subprocess
import time
from pathlib import Path

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import Connection, Engine, create_engine, text

from provisioner.db import lock_key
from tests.replicas.postgres import Cluster, need_postgres
from tests.serving import BIN, clean_env, free_port, poll

# Said by the one process that migrates (provisioner.db.upgrade's log line, or the
# CLI's), not by those that find the schema made.
MIGRATED = re.compile(r"migrat\w+ (the database schema|.*) from (nothing|an empty database)")


def _env(tmp: Path, cluster: Cluster, name: str) -> dict[str, str]:
    return {
        **clean_env(tmp / "home"),
        "PROVISIONER_DATABASE_URL": cluster.url,
        "PROVISIONER_SECRET_KEY": SECRET,
        "PROVISIONER_DATA_DIR": str(tmp / name),
    }


SECRET = Fernet.generate_key().decode()


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"{log.name} exited ({process.returncode}):\n{log.read_text()}")
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


MIGRATIONS = {"key": lock_key("provisioner:migrations")}


def _lock(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), MIGRATIONS)
    connection.commit()


def _unlock(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_unlock(:key)"), MIGRATIONS)
    connection.commit()


def _waiting(engine: Engine) -> int:
    """Connections waiting for an advisory lock (here only the migrations')."""
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return int(connection.execute(text(query)).scalar_one())


def _log(replica: tuple[str, subprocess.Popen[bytes], Path]) -> str:
    return f"{replica[2].name} not ready:\n{replica[2].read_text()}"


def _serve(tmp: Path, cluster: Cluster, name: str) -> tuple[str, subprocess.Popen[bytes], Path]:
    port = free_port()
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BIN / "provisioner", "serve", "--port", str(port)],
            env=_env(tmp, cluster, name),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return f"http://127.0.0.1:{port}", process, log


def _upgrade(tmp: Path, cluster: Cluster, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BIN / "provisioner", "db", "upgrade"],
            env=_env(tmp, cluster, name),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


def test_replicas_and_an_upgrade_started_at_once_migrate_once(tmp_path: Path) -> None:
    cluster = Cluster(need_postgres())
    engine = create_engine(cluster.url)
    replicas: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        with engine.connect() as holder:
            # Held while the four start, until all four wait for it: then they race
            # for it at the same moment, however long each took to start.
            _lock(holder)
            replicas = [_serve(tmp_path, cluster, f"replica-{i}") for i in range(3)]
            upgrade, upgrade_log = _upgrade(tmp_path, cluster, "upgrade")
            poll(lambda: _waiting(engine) == 4, 90, lambda: f"{_waiting(engine)} waiting")
            _unlock(holder)
        assert upgrade.wait(120) == 0, upgrade_log.read_text()
        for replica in replicas:
            poll(functools.partial(_ready, *replica), 90, functools.partial(_log, replica))
        logs = [log.read_text() for _, _, log in replicas] + [upgrade_log.read_text()]
        migrated = [text_ for text_ in logs if MIGRATED.search(text_)]
        assert len(migrated) == 1, f"{len(migrated)} processes migrated:\n" + "\n".join(logs)
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert len(versions.all()) == 1
    finally:
        engine.dispose()
        for _, process, _ in replicas:
            process.terminate()
            process.wait(30)
        cluster.close()


def test_an_upgrade_waits_for_a_migration_under_way_while_replicas_serve(
    tmp_path: Path,
) -> None:
    cluster = Cluster(need_postgres())
    replicas = [_serve(tmp_path, cluster, f"replica-{i}") for i in range(2)]
    engine = create_engine(cluster.url)
    try:
        for replica in replicas:
            poll(functools.partial(_ready, *replica), 90, functools.partial(_log, replica))
        with engine.connect() as holder:
            _lock(holder)  # as a replica migrating holds it
            upgrade, upgrade_log = _upgrade(tmp_path, cluster, "upgrade")
            waited_until = time.monotonic() + 3
            while time.monotonic() < waited_until:
                assert upgrade.poll() is None, f"did not wait:\n{upgrade_log.read_text()}"
                for url, _, _ in replicas:
                    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
                time.sleep(0.2)
            _unlock(holder)
        assert upgrade.wait(60) == 0, upgrade_log.read_text()
        # The replicas had made the schema already.
        assert "nothing to migrate" in upgrade_log.read_text()
    finally:
        engine.dispose()
        for _, process, _ in replicas:
            process.terminate()
            process.wait(30)
        cluster.close()
