"""Database engine, sessions and migrations.

SQLite is the embedded default; PostgreSQL is selected by the URL. Migrations run on
start (``provisioner serve``) and from ``provisioner db upgrade``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, Table, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner.private_files import create_private_file

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    """Alembic scripts: inside the package when installed, else beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("Alembic migrations not found; reinstall the provisioner package")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable across app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite database; None for an in-memory one or another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


# The PostgreSQL application_name of a serving replica's connections: the replicas
# count each other by it (pg_stat_activity), and a dead one's vanish with its process.
REPLICA = "provisioner-serve"
# Seconds a connection attempt to PostgreSQL may take (libpq's connect_timeout).
CONNECT_TIMEOUT = 5


def make_engine(url: str, *, replica: bool = False) -> Engine:
    """An engine for ``url``; ``replica``: this process serves (``provisioner serve``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = sqlite_file(parsed)
        if database is not None:
            # Before SQLite creates it with the umask's mode: it holds secrets.
            create_private_file(database)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        # A server that is down refuses at once, but one cut off by the network never
        # answers: a connection attempt, a /readyz among them, gives up after this
        # many seconds instead of the operating system's minutes, and a connection
        # whose server vanished is found dead by TCP keepalives within a minute.
        connect_args.update(
            connect_timeout=CONNECT_TIMEOUT,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        if replica:
            name = f"{REPLICA} {socket.gethostname()}:{os.getpid()}"
            connect_args["application_name"] = name[:63]
    # pool_pre_ping: a connection pooled before the database restarted is found dead and
    # replaced when it is checked out, rather than failing the request that gets it (an
    # error on one also discards every connection pooled before it).
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
    )


def replicas(session: Session) -> int:
    """How many serving replicas are connected to this PostgreSQL database (at least 1)."""
    count = session.execute(
        text(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE :name"
        ),
        {"name": f"{REPLICA} %"},
    ).scalar()
    return max(1, int(count or 0))


def replica_count(engine: Engine) -> int:
    """:func:`replicas`, in a session of its own; 1 on SQLite (one process)."""
    if engine.dialect.name != "postgresql":
        return 1
    with Session(engine) as session:
        return replicas(session)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> Migration | None:
    """Bring the schema to ``revision``, creating the database if needed; returns the
    migration it ran, None when the schema was there already. On PostgreSQL under an
    advisory lock: of replicas starting at once, one migrates and the others wait for
    it, then find nothing to do."""
    config = alembic_config(engine)
    with _migration_lock(engine):
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        target = ScriptDirectory.from_config(config).get_revision(revision)
        if target is not None and before == target.revision:
            return None
        after = target.revision if target is not None else "base"
        log.info("migrating the database schema from %s to %s", before or "nothing", after)
        command.upgrade(config, revision)
    return Migration(before, after)


@dataclass(frozen=True)
class Migration:
    before: str | None  # None: the database was empty
    after: str


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key of ``name`` (a signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        key = lock_key("provisioner:migrations")
        _lock(connection, key)
        try:
            yield
        finally:
            _unlock(connection, key)


def _lock(connection: Connection, key: int) -> None:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
    connection.commit()


def _try_lock(connection: Connection, key: int) -> bool:
    held = bool(
        connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
    )
    connection.commit()
    return held


def _unlock(connection: Connection, key: int) -> None:
    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    connection.commit()


@asynccontextmanager
async def only_one(engine: Engine, name: str) -> AsyncIterator[bool]:
    """Whether this process holds the lock ``name`` for the block, shared by every
    replica on the database: a PostgreSQL session advisory lock, taken without waiting
    and released at the end of the block, or by the server when the replica's
    connection dies with it. Always True on SQLite (one process)."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    connection = await run_in_threadpool(engine.connect)
    try:
        held = await run_in_threadpool(_try_lock, connection, key)
        try:
            yield held
        finally:
            if held:
                await run_in_threadpool(_unlock, connection, key)
    finally:
        await run_in_threadpool(connection.close)


@asynccontextmanager
async def one_at_a_time(engine: Engine, name: str) -> AsyncIterator[None]:
    """Run the block holding the lock ``name``, waiting for it first: of the replicas
    on the database, one at a time runs a block under ``name``. A PostgreSQL session
    advisory lock, released at the end of the block, or by the server when the
    replica's connection dies with it. On SQLite (one process) no lock is needed."""
    if engine.dialect.name != "postgresql":
        yield
        return
    key = lock_key(name)
    connection = await run_in_threadpool(engine.connect)
    try:
        await run_in_threadpool(_lock, connection, key)
        try:
            yield
        finally:
            await run_in_threadpool(_unlock, connection, key)
    finally:
        await run_in_threadpool(connection.close)


# Ids per statement of lock_in_order: far below the limits on a statement's parameters.
_IDS_PER_LOCK = 1000


def lock_in_order(connection: Connection | Session, table: Table, ids: Iterable[Any]) -> None:
    """Lock the rows of ``table`` with these ids in id order, before statements that
    update them in whatever order they find them. Transactions that update several
    rows of a table at once (a power-sync round, lease renewals, a webhook round's
    wake-ups) then take them in one order, and cannot deadlock on them. As the UPDATE
    would, FOR NO KEY UPDATE, which lets events be inserted for the rows meanwhile.
    PostgreSQL only: SQLite has one writer at a time."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name != "postgresql":
        return
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _IDS_PER_LOCK):
        chunk = ordered[start : start + _IDS_PER_LOCK]
        connection.execute(
            select(table.c.id)
            .where(table.c.id.in_(chunk))
            .order_by(table.c.id)
            .with_for_update(key_share=True)
        )


def ping(engine: Engine) -> None:
    """Ask the database the smallest question; raises SQLAlchemyError if it cannot answer."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def sessions(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session
