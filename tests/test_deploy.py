"""deploy/: the compose file and the systemd units, read as their tools read them.

The compose file is parsed (and checked by ``docker compose config`` where docker's
compose plugin is installed); the units are parsed, and checked by ``systemd-analyze
verify`` where systemd is installed.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
INSTALLED = "/opt/provisioner/bin/provisioner"
PROVISIONER = Path(sys.executable).parent / "provisioner"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    assert isinstance(value, list), value  # exec form: no shell in between
    return [str(item) for item in value]


def test_compose_has_postgresql_two_replicas_and_the_pxe_edge() -> None:
    found = services()
    assert found["db"]["image"].startswith("docker.io/library/postgres:")
    others = [service for name, service in found.items() if name != "db"]
    replicas = [s for s in others if command(s)[:2] == ["provisioner", "serve"]]
    assert len(replicas) == 2
    pxe = [s for s in others if command(s)[:3] == ["provisioner", "pxe", "serve"]]
    assert len(pxe) == 1
    assert pxe[0]["network_mode"] == "host"  # DHCP and TFTP see the boot segment


def test_compose_replicas_share_the_database_and_the_secret_key() -> None:
    found = services()
    replicas = [s for name, s in found.items() if name != "db" and command(s)[1] == "serve"]
    environments = [s["environment"] for s in replicas]
    for name in ("PROVISIONER_DATABASE_URL", "PROVISIONER_SECRET_KEY"):
        values = {env[name] for env in environments}
        assert len(values) == 1, (name, values)
    (url,) = {env["PROVISIONER_DATABASE_URL"] for env in environments}
    assert url.startswith("postgresql+psycopg://"), url
    assert "@db:5432/" in url, url
    for replica in replicas:
        assert "db" in replica["depends_on"]
        (port,) = replica["ports"]
        # Published on loopback unless the operator names an address.
        assert port.startswith("${PROVISIONER_PUBLISH_ADDRESS:-127.0.0.1}:"), port
        assert port.endswith(":8080")


def test_compose_pxe_edge_has_only_the_capability_to_bind_port_69() -> None:
    (pxe,) = [s for name, s in services().items() if name != "db" and "pxe" in command(s)]
    assert pxe["cap_drop"] == ["ALL"]
    assert pxe["cap_add"] == ["NET_BIND_SERVICE"]
    assert pxe["read_only"] is True
    assert "no-new-privileges:true" in pxe["security_opt"]
    assert "ports" not in pxe  # host networking publishes nothing
    # docker gives an added capability to root only; root without CAP_DAC_OVERRIDE.
    assert pxe["user"] == "0:0"


def test_compose_services_start_where_podman_defaults_exceed_the_hard_limits() -> None:
    for name, service in services().items():
        assert set(service["ulimits"]) == {"nofile", "nproc"}, name


def docker_compose() -> list[str] | None:
    """``docker compose``, else Debian's ``docker-compose`` (v1, which scripts/test
    installs): either checks the file offline, without a container engine."""
    docker = shutil.which("docker")
    if docker is not None:
        # The docker CLI without its compose plugin takes "compose" for an unknown command.
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if version.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # podman-compose has no offline check: its --dry-run still makes volumes and networks.
    command = docker_compose()
    if command is None:
        if os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1":
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but neither docker compose nor docker-compose")
        pytest.skip("neither docker compose nor docker-compose is installed")
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "example",
        "PROVISIONER_SECRET_KEY": "example",
        "PROVISIONER_BOOT_URL": "http://192.0.2.1:8081",
        "PROVISIONER_PXE_TOKEN": "example",
    }
    result = subprocess.run(
        [*command, "--file", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def settings(name: str) -> dict[str, list[str]]:
    """Every assignment of [Service], repeated keys kept in order (configparser keeps
    the last one only: systemd adds them up)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
}


@pytest.mark.parametrize("name", ["provisioner.service", "provisioner-pxe.service"])
def test_units_are_hardened(name: str) -> None:
    found = settings(name)
    for key, value in HARDENING.items():
        assert found.get(key) == [value], (key, found.get(key))
    assert found["User"] == ["provisioner"]
    assert found["ExecStart"][0].startswith(f"{INSTALLED} ")
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_serve_unit_writes_only_its_data_dir_and_has_no_capabilities() -> None:
    found = settings("provisioner.service")
    assert found["ExecStart"] == [f"{INSTALLED} serve"]
    assert found["ReadWritePaths"] == ["/var/lib/provisioner"]
    assert found["StateDirectory"] == ["provisioner"]
    assert found["CapabilityBoundingSet"] == [""]
    assert found["AmbientCapabilities"] == [""]


def test_pxe_unit_may_bind_port_69_and_nothing_more() -> None:
    found = settings("provisioner-pxe.service")
    assert found["ExecStart"][0].split()[1:3] == ["pxe", "serve"]
    assert found["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert found["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "ReadWritePaths" not in found


@pytest.mark.parametrize("name", ["provisioner.service", "provisioner-pxe.service"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units are parsed above)")
    # verify checks that ExecStart's program exists: the checkout's venv stands in for
    # the installed one.
    copy = tmp_path / name
    copy.write_text((UNITS / name).read_text().replace(INSTALLED, str(PROVISIONER)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert str(copy) not in output, output  # no warning about the unit itself
