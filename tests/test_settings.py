"""Where the data and agent directories are, as the service and the build tools find
them."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.settings import Settings, default_agent_dir, default_data_dir


def test_the_tools_find_the_data_directory_the_service_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PROVISIONER_DATA_DIR", raising=False)
    assert default_data_dir() == tmp_path / "xdg" / "provisioner"
    (tmp_path / "var").mkdir()
    assert default_data_dir() == Path("var")
    # Set for the service, it is where `provisioner agent build` and the lab look too.
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data" == Settings().data_dir


def test_the_agent_directory_is_in_the_data_directory_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas set PROVISIONER_AGENT_DIR to one shared directory; `provisioner agent
    build` and the lab (default_agent_dir) look where the service does."""
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PROVISIONER_AGENT_DIR", raising=False)
    assert Settings().resolved_agent_dir == tmp_path / "data" / "agent" == default_agent_dir()
    monkeypatch.setenv("PROVISIONER_AGENT_DIR", str(tmp_path / "shared"))
    assert Settings().resolved_agent_dir == tmp_path / "shared" == default_agent_dir()
    assert Settings().data_dir == tmp_path / "data"
