"""The agent build: what it makes from Debian's packages, and that it is cached."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.agent import build, ramdisk
from tests.agent.fixtures import need
from tests.serving import BIN


def members(initrd: Path) -> dict[str, str]:
    """``cpio -t`` of the initramfs, by name: GNU cpio reads what the kernel reads."""
    need("cpio")
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"],
        input=gzip.decompress(initrd.read_bytes()),
        capture_output=True,
        check=True,
    ).stdout.decode()
    out = {}
    for line in listing.splitlines():
        fields = line.split()
        out[fields[8]] = fields[0]
    return out


def test_the_initramfs_holds_busybox_the_agent_and_its_drivers(agent: build.Agent) -> None:
    listed = members(agent.initrd)
    assert listed["init"] == "-rwxr-xr-x"
    assert listed["bin/busybox"] == "-rwxr-xr-x"
    assert listed["bin/sh"].startswith("l")
    modules = (agent.directory / "build.json").read_text()
    order = json.loads(modules)["modules"]
    assert {f"lib/modules/{name}.ko" for name in order} <= set(listed)
    # Every module comes after the modules it depends on, as insmod needs (the kernel
    # names modules with "_" where their files may have "-").
    loaded = [name.replace("-", "_") for name in order]
    for position, name in enumerate(order):
        info = ramdisk.module_info((agent_data_tree(agent) / f"{name}.ko").read_bytes())
        for dependency in ",".join(info.get("depends", [])).split(","):
            if dependency:
                assert loaded.index(dependency.replace("-", "_")) < position, (name, dependency)
    assert agent.initrd.stat().st_size <= 20 * 1024 * 1024


def agent_data_tree(agent: build.Agent) -> Path:
    """The modules as the initramfs holds them, unpacked."""
    target = agent.directory.parent / "unpacked"
    if not target.is_dir():
        target.mkdir()
        subprocess.run(
            ["cpio", "-id", "--quiet"],
            input=gzip.decompress(agent.initrd.read_bytes()),
            cwd=target,
            check=True,
        )
    return target / "lib" / "modules"


def test_a_build_with_the_same_inputs_is_reused(agent: build.Agent) -> None:
    agent_dir = agent.directory.parent
    before = agent.initrd.stat().st_mtime_ns
    lines: list[str] = []
    again = build.build(agent_dir, lines.append)
    assert again.directory == agent.directory
    assert again.initrd.stat().st_mtime_ns == before
    assert lines[-1] == f"up to date: {agent.directory}"
    assert build.current(agent_dir) == agent
    assert build.find(agent_dir, agent.key) == agent


def test_a_changed_input_builds_anew(agent: build.Agent) -> None:
    agent_dir = agent.directory.parent
    fewer = build.build(agent_dir, lambda line: None, modules=("virtio_net",))
    try:
        assert fewer.directory != agent.directory
        assert json.loads((fewer.directory / "build.json").read_text())["modules"][-1] == (
            "virtio_net"
        )
        assert build.current(agent_dir) == fewer
        # The earlier build is still served by its key, to machines told to boot it.
        assert build.find(agent_dir, agent.key) == agent
    finally:
        shutil.rmtree(fewer.directory)
        build.build(agent_dir, lambda line: None)  # current names the full build again


def test_a_driver_the_kernel_lacks_is_a_clear_error(agent: build.Agent) -> None:
    with pytest.raises(build.BuildError, match="the kernel has no module no_such_nic"):
        build.build(agent.directory.parent, lambda line: None, modules=("no_such_nic",))


def test_the_archive_is_the_same_bytes_for_the_same_entries() -> None:
    entries = ramdisk.with_parents(
        {"init": ramdisk.file(b"#!/bin/sh\n", executable=True), "a/b/c": ramdisk.file(b"x")}
    )
    assert ramdisk.initramfs(entries) == ramdisk.initramfs(dict(reversed(entries.items())))
    assert set(entries) == {"init", "a", "a/b", "a/b/c"}


def test_a_file_that_is_not_a_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ramdisk.NotAModule, match="not a 64-bit"):
        ramdisk.module_info(b"#!/bin/sh\n" + bytes(64))


@pytest.mark.parametrize("where", ["data dir", "agent dir"])
def test_the_cli_builds_into_the_agent_dir_and_says_what_it_made(
    agent: build.Agent, agent_data: Path, tmp_path: Path, where: str
) -> None:
    """Into <data_dir>/agent by default, else into PROVISIONER_AGENT_DIR (wherever the
    data directory is): the build the fixture made there is found up to date."""
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONER_AGENT_DIR"}
    if where == "data dir":
        env["PROVISIONER_DATA_DIR"] = str(agent_data)
    else:
        env.update(
            PROVISIONER_DATA_DIR=str(tmp_path), PROVISIONER_AGENT_DIR=str(agent.directory.parent)
        )
    done = subprocess.run(
        [str(BIN / "provisioner"), "agent", "build"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"up to date: {agent.directory}" in done.stdout
    assert str(agent.initrd) in done.stdout
    assert f"build {agent.key}: kernel {agent.kernel_version}" in done.stdout
    assert not (tmp_path / "agent").exists()
