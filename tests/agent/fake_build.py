"""A stand-in agent build: the layout `provisioner agent build` leaves (``<key>/vmlinuz``,
``initrd.img``, ``build.json``, and ``current`` naming it) with random bytes for the
files, for tests of how the service finds and serves a build rather than of the build:
they need no Debian packages."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from provisioner.agent import build


def fake_build(agent_dir: Path, key: str, *, current: bool = True) -> build.Agent:
    """Build ``key`` (16 hex digits) in ``agent_dir``, made the current one unless
    ``current`` is false."""
    out = agent_dir / key
    out.mkdir(parents=True)
    (out / "vmlinuz").write_bytes(os.urandom(40_000))
    (out / "initrd.img").write_bytes(os.urandom(90_000))
    kernel = "6.1.0-99-amd64"
    package = build.Package(f"linux-image-{kernel}", "6.1.999-1", "0" * 64)
    record = {"kernel_version": kernel, "packages": [asdict(package)], "files": {}}
    (out / "build.json").write_text(json.dumps(record))
    if current:
        (agent_dir / "current").write_text(key + "\n")
    agent = build.find(agent_dir, key)
    assert agent is not None
    return agent
