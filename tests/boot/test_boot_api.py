"""The node-facing routes: iPXE scripts by state, discovery, answer files, callbacks,
per-MAC TFTP files and the boot trace."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlmodel import col

from provisioner.app import create_app
from provisioner.models import BootHop, Deployment, Node, table_of, utcnow
from provisioner.settings import Settings
from provisioner.timeline import EventKind
from tests.conftest import node_body, snapshot

MAC = "52:54:00:00:01:01"
# Commands the scripts may use (iPXE's own command names).
IPXE_COMMANDS = {
    "echo",
    "chain",
    "kernel",
    "initrd",
    "boot",
    "sleep",
    "reboot",
    "goto",
    "iseq",
    "sanboot",
    "exit",
}


def lint_ipxe(script: str) -> None:
    """What iPXE itself would reject: no #!ipxe header, unknown commands, goto to a
    label that does not exist, unbalanced ${...}."""
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    labels = {line[1:] for line in lines if line.startswith(":")}
    for line in lines[1:]:
        if not line or line.startswith(("#", ":")):
            continue
        assert line.count("${") == line.count("}"), line
        for command in re.split(r"\s*(?:&&|\|\|)\s*", line):
            if not command:
                continue
            words = command.split()
            assert words[0] in IPXE_COMMANDS, line
            if words[0] == "goto":
                assert words[1] in labels, line


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def flush_hops(client: TestClient, app: FastAPI) -> None:
    """Write the boot hops recorded so far, which the app otherwise does in batches."""
    client.portal.call(app.state.services.boot.hops.flush)  # type: ignore[union-attr]


def events(
    client: TestClient, headers: dict[str, str], node: str = "r01-u01"
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/api/v1/nodes/{node}/events", headers=headers).json()
    return found


def has_event(client: TestClient, headers: dict[str, str], kind: str, text: str = "") -> bool:
    return any(e["kind"] == kind and text in e["message"] for e in events(client, headers))


@pytest.fixture
def provisioning(
    client: TestClient, app: FastAPI, admin: dict[str, str], operator: dict[str, str]
) -> str:
    """A node in provisioning with rocky-9 as role compute; returns its token."""
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    with app.state.services.engine.begin() as connection:
        connection.execute(update(table_of(Node)).values(state="ready"))
    role = {"name": "compute", "default_image": "rocky-9", "packages": ["chrony"]}
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
    response = client.post(
        "/api/v1/nodes/r01-u01/actions/provision", json={"role": "compute"}, headers=operator
    )
    assert response.status_code == 202, response.text
    script = client.get("/boot/ipxe", params={"mac": MAC}).text
    match = re.search(r"/boot/answers/([A-Za-z0-9_-]+)", script)
    assert match, script
    # The hops of that request (boot address, timeline) are written before the test.
    flush_hops(client, app)
    return match.group(1)


def test_provisioning_node_gets_its_installer(
    client: TestClient, provisioning: str, operator: dict[str, str]
) -> None:
    response = client.get("/boot/ipxe", params={"mac": MAC.upper().replace(":", "-")})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    script = response.text
    lint_ipxe(script)
    assert "kernel --name kernel https://dl.rockylinux.org/" in script
    assert "initrd --name initrd https://dl.rockylinux.org/" in script
    assert f"inst.ks=http://testserver/boot/answers/{provisioning}" in script
    assert "|| goto failed" in script
    wait_for(lambda: has_event(client, operator, "boot-ipxe", "install rocky-9"))


def test_other_states_boot_from_disk(
    client: TestClient, app: FastAPI, operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    for state in ("enrolled", "ready", "active", "failed"):
        with app.state.services.engine.begin() as connection:
            connection.execute(update(table_of(Node)).values(state=state))
        script = client.get("/boot/ipxe", params={"mac": MAC}).text
        lint_ipxe(script)
        assert "sanboot --no-describe --drive 0x80" in script
        assert "kernel" not in script
        assert f"r01-u01 is {state}" in script
    wait_for(lambda: has_event(client, operator, "boot-ipxe", "local disk (r01-u01 is failed)"))


def test_unknown_mac_is_discovered_once(
    client: TestClient, app: FastAPI, viewer: dict[str, str]
) -> None:
    for _ in range(3):
        script = client.get("/boot/ipxe", params={"mac": "52:54:00:aa:bb:cc"}).text
        lint_ipxe(script)
        assert "booting from local disk" in script
    listed = client.get("/api/v1/nodes", params={"state": "discovered"}, headers=viewer).json()
    assert [n["name"] for n in listed["items"]] == ["discovered-525400aabbcc"]
    assert listed["items"][0]["nics"][0]["mac"] == "52:54:00:aa:bb:cc"
    wait_for(
        lambda: (
            len(
                [
                    e
                    for e in events(client, viewer, "discovered-525400aabbcc")
                    if e["kind"] == "boot-ipxe"
                ]
            )
            == 3
        )
    )
    kinds = [e["kind"] for e in events(client, viewer, "discovered-525400aabbcc")]
    assert kinds.count("discovered") == 1


def test_discovery_image_when_configured(
    client: TestClient, app: FastAPI, viewer: dict[str, str]
) -> None:
    app.state.services.settings.discovery_kernel_url = "discovery/vmlinuz"
    app.state.services.settings.discovery_initrd_url = "https://images.example/discovery.img"
    script = client.get("/boot/ipxe", params={"mac": "52:54:00:aa:bb:cd"}).text
    lint_ipxe(script)
    assert "kernel --name kernel http://testserver/boot/files/discovery/vmlinuz " in script
    assert "provisioner.mac=52:54:00:aa:bb:cd" in script


def test_bad_mac_is_a_clear_422(client: TestClient) -> None:
    response = client.get("/boot/ipxe", params={"mac": "not-a-mac"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert client.get("/boot/ipxe").status_code == 422


def test_bootstrap_chains_with_ipxe_variables(client: TestClient, app: FastAPI) -> None:
    app.state.services.settings.boot_url = "http://10.0.0.2:8080/"
    script = client.get("/boot/bootstrap.ipxe").text
    lint_ipxe(script)
    assert (
        "chain --autofree http://10.0.0.2:8080/boot/ipxe?mac=${net0/mac}&platform=${platform}"
        in script
    )


def test_answer_file_and_callbacks(
    client: TestClient, provisioning: str, operator: dict[str, str], app: FastAPI
) -> None:
    token = provisioning
    answer = client.get(f"/boot/answers/{token}")
    assert answer.status_code == 200
    assert f"http://testserver/callback/{token}/started" in answer.text
    assert f"http://testserver/callback/{token}/done" in answer.text

    assert client.post(f"/callback/{token}/started").status_code == 200
    assert client.post(f"/callback/{token}/started").status_code == 409
    progress = client.post(f"/callback/{token}/progress", json={"message": "packages installed"})
    assert progress.status_code == 200
    assert client.post(f"/callback/{token}/done").status_code == 200

    with app.state.services.engine.connect() as connection:
        row = connection.execute(table_of(Deployment).select()).one()
    assert (row.status, row.message) == ("done", "packages installed")
    kinds = [e["kind"] for e in events(client, operator)]
    assert kinds[-3:] == ["callback-started", "callback-progress", "callback-done"]

    # Spent: the answer file and every callback are refused now, and change nothing.
    flush_hops(client, app)
    before = snapshot(app)
    assert client.get(f"/boot/answers/{token}").status_code == 410
    for kind in ("started", "progress", "done", "failed"):
        assert client.post(f"/callback/{token}/{kind}").status_code == 410
    assert snapshot(app) == before


def test_wrong_and_expired_tokens(client: TestClient, provisioning: str, app: FastAPI) -> None:
    before = snapshot(app)
    assert client.get("/boot/answers/not-a-token").status_code == 404
    assert client.post("/callback/not-a-token/done").status_code == 404
    assert client.post(f"/callback/{provisioning}/rebooted").status_code == 422
    assert snapshot(app) == before

    with app.state.services.engine.begin() as connection:
        connection.execute(
            update(table_of(Deployment)).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    flush_hops(client, app)
    before = snapshot(app)
    assert client.get(f"/boot/answers/{provisioning}").status_code == 410
    assert client.post(f"/callback/{provisioning}/done").status_code == 410
    assert snapshot(app) == before
    assert "no live deployment" in client.get("/boot/ipxe", params={"mac": MAC}).text


def test_a_new_deployment_spends_the_old_token(
    client: TestClient, provisioning: str, operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/nodes/r01-u01/actions/abort", headers=operator).status_code == 202
    assert client.post(f"/callback/{provisioning}/started").status_code == 410
    assert client.post("/api/v1/nodes/r01-u01/actions/retry", headers=operator).status_code == 202
    script = client.get("/boot/ipxe", params={"mac": MAC}).text
    assert provisioning not in script
    new_token = re.search(r"/boot/answers/([A-Za-z0-9_-]+)", script)
    assert new_token
    assert client.post(f"/callback/{new_token.group(1)}/started").status_code == 200


def test_per_mac_tftp_files(client: TestClient, provisioning: str, viewer: dict[str, str]) -> None:
    dashed = MAC.replace(":", "-")
    pxelinux = client.get(f"/boot/tftp/pxelinux.cfg/01-{dashed}", params={"client": "10.0.0.9"})
    assert pxelinux.status_code == 200
    assert "KERNEL https://dl.rockylinux.org/" in pxelinux.text
    assert f"inst.ks=http://testserver/boot/answers/{provisioning}" in pxelinux.text
    # GRUB cannot fetch https: the plan falls back to local boot and says why.
    grub = client.get(f"/boot/tftp/grub/grub.cfg-01-{dashed}", params={"client": "10.0.0.9"})
    assert grub.status_code == 200
    assert "exit" in grub.text
    assert "https" in grub.text
    unknown = client.get("/boot/tftp/pxelinux.cfg/01-52-54-00-ff-ff-ff", params={"client": "x"})
    assert unknown.status_code == 404
    assert client.get("/boot/tftp/pxelinux.cfg/default", params={"client": "x"}).status_code == 404
    wait_for(
        lambda: any(
            h["mac"] == "52:54:00:ff:ff:ff"
            for h in client.get("/api/v1/boot/hops", headers=viewer).json()
        )
    )


def test_tftp_trace_lands_on_the_node_that_booted_from_the_address(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    # iPXE's request tells the service which address this NIC boots from.
    client.get("/boot/ipxe", params={"mac": MAC})
    wait_for(lambda: has_event(client, viewer, "boot-ipxe"))
    transfer = {
        "client": "testclient",
        "file": "undionly.kpxe",
        "bytes": 70000,
        "duration": 0.12,
        "result": "ok",
    }
    stranger = {**transfer, "client": "192.0.2.77"}
    assert (
        client.post("/boot/trace/tftp", json={"transfers": [transfer, stranger]}).status_code == 401
    )
    response = client.post(
        "/boot/trace/tftp", json={"transfers": [transfer, stranger]}, headers=operator
    )
    assert response.status_code == 202
    wait_for(
        lambda: has_event(
            client, viewer, "boot-tftp", "TFTP undionly.kpxe to testclient: ok, 70,000 bytes"
        )
    )
    wait_for(
        lambda: any(
            h["client"] == "192.0.2.77"
            for h in client.get("/api/v1/boot/hops", headers=viewer).json()
        )
    )


def test_dhcp_answers_land_on_the_node_and_place_its_first_tftp_fetch(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    answer = {
        "mac": MAC.upper(),
        "interface": "br0",
        "kind": "ack",
        "address": "192.0.2.50",
        "vendor_class": "PXEClient:Arch:00007:UNDI:003016",
        "bootfile": "snponly.efi",
    }
    stranger = {**answer, "mac": "52:54:00:ff:ff:fe", "address": "192.0.2.51"}
    body = {"exchanges": [answer, stranger]}
    assert client.post("/boot/trace/dhcp", json=body).status_code == 401
    bad = {"exchanges": [{**answer, "mac": "52:54:00:ff:ff"}]}
    assert client.post("/boot/trace/dhcp", json=bad, headers=operator).status_code == 422
    assert client.post("/boot/trace/dhcp", json=body, headers=operator).status_code == 202
    wait_for(
        lambda: has_event(
            client,
            viewer,
            "boot-dhcp",
            "DHCP: 192.0.2.50 to PXEClient:Arch:00007:UNDI:003016 on br0, boot file snponly.efi",
        )
    )
    # The firmware fetches its loader before any request names the machine: the DHCP
    # answer already told which node that address is.
    transfer = {
        "client": "192.0.2.50",
        "file": "snponly.efi",
        "bytes": 200_000,
        "duration": 0.3,
        "result": "ok",
    }
    response = client.post("/boot/trace/tftp", json={"transfers": [transfer]}, headers=operator)
    assert response.status_code == 202
    wait_for(lambda: has_event(client, viewer, "boot-tftp", "TFTP snponly.efi to 192.0.2.50"))

    def stranger_hops() -> list[dict[str, str]]:
        hops = client.get("/api/v1/boot/hops", headers=viewer).json()
        return [h for h in hops if h["mac"] == "52:54:00:ff:ff:fe" and h["kind"] == "boot-dhcp"]

    wait_for(lambda: len(stranger_hops()) == 1)
    # Once the stranger's iPXE asks for its script, it is discovered, and its DHCP
    # answer moves to its node's timeline.
    client.get("/boot/ipxe", params={"mac": "52:54:00:ff:ff:fe"})
    wait_for(
        lambda: any(
            e["kind"] == "boot-dhcp" and e["message"].startswith("DHCP: 192.0.2.51 ")
            for e in events(client, viewer, "discovered-525400fffffe")
        )
    )
    assert stranger_hops() == []


def test_unknown_hops_are_bounded(settings: Settings) -> None:
    keep = 100
    app = create_app(settings.model_copy(update={"boot_hops_kept": keep}))
    with TestClient(app) as client:
        recorder = app.state.services.boot.hops
        for i in range(3 * keep):
            recorder.unknown(f"192.0.2.{i % 250}", None, EventKind.BOOT_TFTP, f"hop {i}")
            if i % 50 == 49:
                flush_hops(client, app)
        with app.state.services.engine.connect() as connection:
            details = (
                connection.execute(select(col(BootHop.detail)).order_by(col(BootHop.id).desc()))
                .scalars()
                .all()
            )
    assert keep <= len(details) <= keep * 1.1 + 50
    assert details[0] == f"hop {3 * keep - 1}"
