"""Database engine, sessions and migrations.

SQLite is the embedded default; PostgreSQL is selected by the URL. Migrations run on
start (``provisioner serve``) and from ``provisioner db upgrade``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from provisioner.private_files import create_private_file


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


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = sqlite_file(parsed)
        if database is not None:
            # Before SQLite creates it with the umask's mode: it holds secrets.
            create_private_file(database)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, creating the database if needed."""
    command.upgrade(alembic_config(engine), revision)


def ping(engine: Engine) -> None:
    """Ask the database the smallest question; raises SQLAlchemyError if it cannot answer."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def sessions(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session
