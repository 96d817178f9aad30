"""Files that hold secrets are the service user's only. The SQLite database (encrypted
BMC passwords, token hashes) is created mode 0600 whatever the umask, as ``secret.key``
is (secrets.py), and the service says at start, with the command to run, when other
users can read or write its data directory or read its database."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

log = logging.getLogger(__name__)

# Read or write by group or others. Execute alone is left alone: it reveals no names, and
# a web server serving the images directory inside (docs/nginx.md) needs it.
_OPEN_DIRECTORY = 0o066
_OPEN_FILE = 0o077
# A SQLite database and the files SQLite keeps beside it in WAL mode.
_SQLITE_FILES = ("", "-wal", "-shm")


def create_private_file(path: Path) -> None:
    """``path``, empty, mode 0600, unless it exists; its directory, when created here,
    the owner's only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        # A umask can take away the owner's bits too; SQLite copies this mode to its
        # -wal and -shm files.
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def warn_if_open(data_dir: Path, database: Path | None) -> None:
    """One warning line naming what is open and the commands that close it."""
    opened: list[str] = []
    commands: list[str] = []
    mode = _mode(data_dir)
    if mode is not None and mode & _OPEN_DIRECTORY:
        opened.append(f"data directory {data_dir.resolve()} ({mode:04o})")
        commands.append(f"chmod go-rw {shlex.quote(str(data_dir.resolve()))}")
    readable = []
    for path in [] if database is None else [Path(f"{database}{end}") for end in _SQLITE_FILES]:
        mode = _mode(path)
        if mode is not None and mode & _OPEN_FILE:
            opened.append(f"{path.resolve()} ({mode:04o})")
            readable.append(shlex.quote(str(path.resolve())))
    if readable:
        commands.append("chmod 600 " + " ".join(readable))
    if opened:
        log.warning(
            "other users can reach the service's secrets: %s; run: %s",
            ", ".join(opened),
            " && ".join(commands),
        )


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
