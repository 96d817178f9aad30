"""Assembling the TFTP root: atomic copies, idempotence, and what a missing file says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pxe.assets import BOOT_FILES, Action, AssetError, assemble


@pytest.fixture
def source(tmp_path: Path) -> Path:
    directory = tmp_path / "ipxe"
    directory.mkdir()
    for name in BOOT_FILES:
        (directory / name).write_bytes(f"binary {name}\n".encode())
    return directory


def test_copies_every_boot_file(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    results = assemble(source, root)
    assert [(r.name, r.action) for r in results] == [(n, Action.COPIED) for n in BOOT_FILES]
    for name in BOOT_FILES:
        assert (root / name).read_bytes() == (source / name).read_bytes()
        assert (root / name).stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(root)) == sorted(BOOT_FILES)  # no temporary files left


def test_second_run_changes_nothing_and_updates_what_differs(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    assemble(source, root)
    inode = (root / "ipxe.efi").stat().st_ino
    (source / "snponly.efi").write_bytes(b"newer build\n")
    actions = {r.name: r.action for r in assemble(source, root)}
    assert actions == {
        "undionly.kpxe": Action.UNCHANGED,
        "ipxe.efi": Action.UNCHANGED,
        "snponly.efi": Action.UPDATED,
    }
    assert (root / "ipxe.efi").stat().st_ino == inode
    assert (root / "snponly.efi").read_bytes() == b"newer build\n"


def test_follows_symlinks_in_the_source_and_replaces_them_in_the_root(
    source: Path, tmp_path: Path
) -> None:
    # Debian's /usr/lib/ipxe/ipxe.efi is a symlink into /boot.
    real = tmp_path / "boot-ipxe.efi"
    real.write_bytes(b"real efi\n")
    (source / "ipxe.efi").unlink()
    (source / "ipxe.efi").symlink_to(real)
    root = tmp_path / "tftp"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"do not touch\n")
    (root / "ipxe.efi").symlink_to(outside)
    assemble(source, root)
    assert not (root / "ipxe.efi").is_symlink()
    assert (root / "ipxe.efi").read_bytes() == b"real efi\n"
    assert outside.read_bytes() == b"do not touch\n"


def test_missing_files_are_reported_and_the_rest_installed(source: Path, tmp_path: Path) -> None:
    (source / "snponly.efi").unlink()
    results = {r.name: r for r in assemble(source, tmp_path / "tftp")}
    assert results["snponly.efi"].action is Action.MISSING
    assert results["snponly.efi"].size is None
    assert results["ipxe.efi"].action is Action.COPIED


def test_a_source_that_is_not_a_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"apt-get install ipxe.*--source DIR"):
        assemble(tmp_path / "nowhere", tmp_path / "tftp")
