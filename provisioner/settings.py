"""Service settings, read from ``PROVISIONER_*`` environment variables.

Zero configuration must work: everything has a default that suits one operator on one
machine (SQLite in a local data directory, API on loopback).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """``./var`` when run from a checkout, else the XDG data directory."""
    if Path("pyproject.toml").is_file() or Path("var").is_dir():
        return Path("var")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "provisioner"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROVISIONER_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; SQLite in the data directory when unset. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key encrypting BMC passwords; generated into "
        "<data_dir>/secret.key (mode 0600) when unset.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = 1024 * 1024
    log_level: str = "info"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'provisioner.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
