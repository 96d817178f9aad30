"""One agent build per test session (a plugin of tests/conftest.py, so tests/agent and
tests/lab share it): the first test that needs it downloads Debian's
kernel and busybox packages and builds; the others reuse it (a rebuild with unchanged
inputs is a cache hit, which tests/agent/test_build.py checks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab import image
from provisioner.agent import build

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"


def need(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        message = f"needs {', '.join(missing)} (Debian)"
        if REQUIRE_TOOLS:
            pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but this {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def agent_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("apt-get", "apt-cache", "dpkg-deb")
    return tmp_path_factory.mktemp("agent-data")


@pytest.fixture(scope="session")
def agent(agent_data: Path) -> build.Agent:
    try:
        return build.build(agent_data / "agent", lambda line: None)
    except build.BuildError as exc:
        if REQUIRE_TOOLS:
            raise
        pytest.skip(f"cannot build the agent here: {exc}")


@pytest.fixture(scope="session")
def lab_image(agent_data: Path) -> image.Image:
    """The lab's deployable test image, built into the agent's data directory: the
    packages are downloaded once for both."""
    need(*image.TOOLS)
    for path in (image.SYSLINUX_MBR, image.SYSTEMD_BOOT):
        if not path.is_file():
            message = f"needs {path} (Debian: syslinux, systemd-boot-efi)"
            if REQUIRE_TOOLS:
                pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but this {message}")
            pytest.skip(message)
    try:
        return image.build_image(agent_data, lambda line: None)
    except build.BuildError as exc:
        if REQUIRE_TOOLS:
            raise
        pytest.skip(f"cannot build the image here: {exc}")


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def qemu_machine(firmware: str, tmp_path: Path) -> list[str]:
    """A QEMU machine under pure emulation (KVM here cannot run stock guests): 1 vCPU,
    512 MiB, no display, its console in ``tmp_path/serial.log``; ``uefi`` boots OVMF
    with a copy of its variables. The test adds the devices."""
    need("qemu-system-x86_64")
    args = [
        "qemu-system-x86_64",
        "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
        "-no-reboot", "-display", "none", "-monitor", "none",
        "-serial", f"file:{tmp_path / 'serial.log'}",
    ]  # fmt: skip
    if firmware == "uefi":
        if not OVMF_CODE.is_file():
            need("ovmf (/usr/share/OVMF)")
        vars_copy = tmp_path / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        args += [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip
    return args
