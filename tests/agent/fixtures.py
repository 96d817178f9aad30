"""One agent build per test session (a plugin of tests/conftest.py, so tests/agent and
tests/lab share it): the first test that needs it downloads Debian's
kernel and busybox packages and builds; the others reuse it (a rebuild with unchanged
inputs is a cache hit, which tests/agent/test_build.py checks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
        return build.build(agent_data, lambda line: None)
    except build.BuildError as exc:
        if REQUIRE_TOOLS:
            raise
        pytest.skip(f"cannot build the agent here: {exc}")
