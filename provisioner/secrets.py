"""Encryption at rest for BMC passwords, and API token hashing.

The Fernet key comes from ``PROVISIONER_SECRET_KEY`` or from ``<data_dir>/secret.key``,
which is created with mode 0600 on first use. Losing that file makes stored BMC
passwords unreadable: back it up with the database.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from cryptography.fernet import Fernet, InvalidToken

from provisioner.settings import Settings

TOKEN_PREFIX = "prov_"  # noqa: S105  (a marker that makes leaked tokens greppable)


def load_or_create_key(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    # The owner's only when created here, as the database's (private_files.py).
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


class Vault:
    """Encrypts and decrypts secrets stored in the database."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        return cls(load_or_create_key(settings))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ValueError(
                "cannot decrypt a stored secret: the secret key differs from the one it was "
                "encrypted with (check PROVISIONER_SECRET_KEY or <data_dir>/secret.key)"
            ) from exc


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
