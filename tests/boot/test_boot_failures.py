"""A deployment whose boot chain cannot be rendered fails once, with the reason on its
node's timeline, and the machine is told why instead of getting a 500 (issue 11,
defect 3).

The image is broken underneath the API, as a database written before images were checked
has it: the node's own flow goes through the real actions, the reconciler and the
machine's requests."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from provisioner.bmc.fake import FakeBmc, FakeFleet
from provisioner.boot import scripts
from provisioner.models import OsImage, table_of
from tests.boot.test_boot_api import lint_ipxe
from tests.flows import machine, services
from tests.test_deploying import app, client, enroll, fleet, ticks
from tests.test_reconciler import node, tick

MAC = "52:54:00:00:98:01"
ADDRESS = "10.0.0.5"
REPO = "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/"


# The fake BMCs' service of tests/test_deploying.py.
__all__ = ["app", "client", "fleet"]


def provision(
    client: TestClient, admin: dict[str, str], operator: dict[str, str], fleet: FakeFleet
) -> FakeBmc:
    """Node n1 inspected and asked to provision rocky-9 as role compute."""
    assert client.post("/api/v1/roles", json={"name": "compute"}, headers=admin).status_code == 201
    fake = enroll(client, operator, fleet, "n1", 1)
    tick(client)  # inspected: ready
    body = {"role": "compute", "image": "rocky-9"}
    started = client.post("/api/v1/nodes/n1/actions/provision", json=body, headers=operator)
    assert started.status_code == 202, started.text
    return fake


@pytest.fixture
def provisioning(
    client: TestClient, admin: dict[str, str], operator: dict[str, str], fleet: FakeFleet
) -> None:
    """Node n1 provisioning, powered on by the reconciler and waiting for its machine."""
    provision(client, admin, operator, fleet)
    ticks(client, 3)  # network, power, install (waits for the machine)


def without_repo(app: FastAPI) -> None:
    """rocky-9 as a database from before images were checked may hold it: a kickstart
    image with no repo_url, which no installer can be pointed at."""
    with app.state.services.engine.begin() as connection:
        connection.execute(
            update(table_of(OsImage))
            .where(table_of(OsImage).c.name == "rocky-9")
            .values(repo_url="")
        )


def events(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    client.portal.call(services(client.app).boot.hops.flush)  # type: ignore[union-attr]
    found: list[dict[str, Any]] = client.get("/api/v1/nodes/n1/events", headers=headers).json()
    return found


def failed_once(
    client: TestClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture, what: str
) -> dict[str, Any]:
    """Node n1 after the reconciler has seen its failed deployment: failed once, with the
    reason on its timeline and one log line, and never a traceback."""
    ticks(client, 3)
    failed = node(client, headers, "n1")
    assert failed["state"] == "failed", failed
    assert failed["last_error"].startswith(f"install: {scripts.BOOT_FAILED} ({what}): ")
    timeline = events(client, headers)
    assert [e["kind"] for e in timeline if e["to_state"] == "failed"] == ["fail"]
    reason = failed["last_error"].split(": ", 2)[2]
    assert sum(reason in e["message"] for e in timeline) == 2  # the failure, the transition
    assert not [r for r in caplog.records if r.exc_info]
    logged = [r for r in caplog.records if r.name == "provisioner.boot.service"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    return failed


def test_an_unrenderable_ipxe_script_fails_the_deployment_once(
    client: TestClient,
    app: FastAPI,
    operator: dict[str, str],
    admin: dict[str, str],
    provisioning: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    without_repo(app)
    with machine(client, ADDRESS) as own:
        answers = [own.get("/boot/ipxe", params={"mac": MAC}) for _ in range(50)]
    assert {a.status_code for a in answers} == {200}
    first = answers[0].text
    lint_ipxe(first)
    assert "needs a repo_url" in first
    assert "sanboot" in first  # boots from its disk, saying why
    assert "kernel" not in first
    failed_once(client, operator, caplog, "iPXE script")
    # Mended through the API, a retry installs.
    mended = client.patch("/api/v1/images/rocky-9", json={"repo_url": REPO}, headers=admin)
    assert mended.status_code == 200, mended.text
    assert client.post("/api/v1/nodes/n1/actions/retry", headers=operator).status_code == 202
    ticks(client, 3)
    with machine(client, ADDRESS) as own:
        script = own.get("/boot/ipxe", params={"mac": MAC}).text
    assert f"inst.repo={REPO}" in script


def test_an_unrenderable_answer_file_fails_the_deployment_once(
    client: TestClient,
    app: FastAPI,
    operator: dict[str, str],
    provisioning: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with machine(client, ADDRESS) as own:
        script = own.get("/boot/ipxe", params={"mac": MAC}).text
        token = re.search(r"/boot/answers/([A-Za-z0-9_-]+)", script)
        assert token, script
        without_repo(app)  # changed while the installer boots
        first = own.get(f"/boot/answers/{token.group(1)}")
        assert first.status_code == 410
        assert "needs a repo_url" in first.json()["detail"]
        assert first.json()["title"] == "Gone"  # the status's phrase, not "Error"
        again = [own.get(f"/boot/answers/{token.group(1)}") for _ in range(20)]
    assert {a.status_code for a in again} == {410}
    failed_once(client, operator, caplog, "answer file")


def test_a_loader_config_that_cannot_be_rendered_fails_the_deployment(
    client: TestClient,
    operator: dict[str, str],
    provisioning: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    path = f"/boot/tftp/grub/grub.cfg-01-{MAC.replace(':', '-')}"
    # rocky-9's kernel is on an https:// mirror, which GRUB cannot fetch.
    configs = [client.get(path, params={"client": ADDRESS}) for _ in range(10)]
    assert {c.status_code for c in configs} == {200}
    assert "GRUB can only fetch http://" in configs[0].text
    assert configs[0].text.splitlines()[1:] == ["set timeout=0", "exit"]
    failed = failed_once(client, operator, caplog, f"grub/grub.cfg-01-{MAC.replace(':', '-')}")
    assert "https://dl.rockylinux.org" in failed["last_error"]


def test_a_failed_deployment_is_not_powered_on(
    client: TestClient,
    app: FastAPI,
    admin: dict[str, str],
    operator: dict[str, str],
    fleet: FakeFleet,
) -> None:
    """A machine that network-boots before the reconciler powers it on (it was on
    already) fails its deployment there: the node fails without a power cycle."""
    fake = provision(client, admin, operator, fleet)
    without_repo(app)
    assert client.get("/boot/ipxe", params={"mac": MAC}).status_code == 200
    power_before = fake.power
    tick(client)
    assert node(client, operator, "n1")["state"] == "failed"
    assert fake.power == power_before


def test_an_echoed_reason_cannot_become_an_ipxe_command() -> None:
    script = scripts.local_disk('kernel argument "${net0/mac}" || reboot ; shell # x')
    lint_ipxe(script)
    echo = script.splitlines()[1]
    reason = echo.removeprefix("echo provisioner: ").removesuffix("; booting from local disk")
    assert not set('${}"|;#') & set(reason)


def test_a_host_header_no_script_can_carry_fails_no_deployment(
    client: TestClient, operator: dict[str, str], provisioning: None
) -> None:
    """The base URL comes from the asker's Host header: a bad one is the asker's doing."""
    tftp = f"/boot/tftp/pxelinux.cfg/01-{MAC.replace(':', '-')}"
    for host in ("evil${net0/mac}", 'a"b', "a\\b"):
        script = client.get("/boot/ipxe", params={"mac": MAC}, headers={"host": host})
        assert script.status_code == 400, script.text
        assert "Host header" in script.json()["detail"]
        # Starlette's routes fall back to the server's own address for such a header.
        config = client.get(tftp, params={"client": ADDRESS}, headers={"host": host})
        assert host not in config.text
    ticks(client, 2)
    assert node(client, operator, "n1")["state"] == "provisioning"
    assert "inst.ks=" in client.get("/boot/ipxe", params={"mac": MAC}).text
