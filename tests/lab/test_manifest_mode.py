"""The lab's manifest holds every BMC password in the clear: it is the owner's only
(0600) whatever the umask, written by ``write_manifest`` or by ``provisioner-lab up``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.rack import plan_rack, write_manifest
from tests.lab.conftest import Lab


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process's umask, which a forked child inherits, for the block's duration."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277])
@pytest.mark.parametrize("suffix", [".csv", ".yaml"])
def test_manifest_is_the_owners_only(tmp_path: Path, mask: int, suffix: str) -> None:
    path = tmp_path / f"rack{suffix}"
    # A manifest an earlier run left readable, and a leftover of an interrupted write.
    path.write_text("old\n")
    path.chmod(0o644)
    leftover = path.with_name(path.name + ".tmp")
    leftover.write_text("half\n")
    leftover.chmod(0o666)
    with umask(mask):
        write_manifest(path, plan_rack(3, seed=1, base_port=7000))
    assert mode(path) == 0o600
    assert "lab-r01-u03" in path.read_text()
    assert not leftover.exists()


def test_lab_up_writes_a_private_manifest(tmp_path: Path) -> None:
    with umask(0o022):
        lab = Lab(tmp_path, 1)
    try:
        assert mode(lab.manifest) == 0o600
        assert lab.nodes[0].password  # the secret the mode protects
    finally:
        assert lab.stop() == 0, "\n".join(lab.output)
