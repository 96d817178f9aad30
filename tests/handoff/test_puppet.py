"""Puppet: the ENC's YAML through the API and `provisioner enc`, and policy autosign
with real CSRs made by `cryptography` and by `openssl req`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, NameOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from provisioner import handoff
from provisioner import puppet_formats as formats
from provisioner.bmc.fake import FakeFleet
from provisioner.models import Deployment, Event, Node
from tests import flows
from tests.handoff.conftest import DOMAIN, Live, cli, install

FQDN = f"r01-u05.{DOMAIN}"


def _role(client: TestClient, admin: dict[str, str], **body: object) -> None:
    response = client.post("/api/v1/roles", json=body, headers=admin)
    assert response.status_code == 201, response.text


def _enc(client: TestClient, certname: str, headers: dict[str, str]) -> Any:
    return client.get(f"/api/v1/handoff/puppet/enc/{certname}", headers=headers)


def test_enc_answers_what_external_nodes_expects(
    client: TestClient, fleet: FakeFleet, admin: dict[str, str], viewer: dict[str, str]
) -> None:
    # A role parameter may not override the node's own placement.
    _role(client, admin, name="db-server", parameters={"tier": "gold", "rack": "r99"})
    install(client, fleet, "r01-u05", "db-server", unit=5)
    for certname in (FQDN, "r01-u05"):
        response = _enc(client, certname, viewer)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(response.text) == {
            "classes": {"role::db_server": {}},
            "environment": "production",
            "parameters": {
                "node_name": "r01-u05",
                "role": "db-server",
                "rack": "r01",
                "rack_unit": 5,
                "hardware_profile": "lab-small",
                "image": "rocky-9",
                "tier": "gold",
            },
        }
    assert _enc(client, "r01-u05.elsewhere.example", viewer).status_code == 404
    assert _enc(client, "nosuchnode", viewer).status_code == 404
    assert _enc(client, FQDN, {}).status_code == 401


def test_enc_uses_the_roles_classes_and_environment(
    client: TestClient, fleet: FakeFleet, admin: dict[str, str], viewer: dict[str, str]
) -> None:
    classes = ["role::storage", "profile::ceph::osd"]
    _role(client, admin, name="storage", puppet_classes=classes, puppet_environment="staging")
    install(client, fleet, "r01-u05", "storage")
    answer = yaml.safe_load(_enc(client, FQDN, viewer).text)
    assert answer["classes"] == {name: {} for name in classes}
    assert answer["environment"] == "staging"


def test_a_released_node_is_no_longer_classified_in_its_role(
    client: TestClient, fleet: FakeFleet, admin: dict[str, str], operator: dict[str, str]
) -> None:
    """After a release the node runs no system of its role: the ENC gives a Puppet agent
    left on it neither the role's classes nor its environment, while wiping and once
    ready again, though the node keeps its role for the next provision (issue 11)."""
    _role(client, admin, name="db-server", puppet_environment="staging")
    install(client, fleet, "r01-u05", "db-server", state="active")
    assert yaml.safe_load(_enc(client, FQDN, operator).text)["classes"] == {"role::db_server": {}}
    released = client.post("/api/v1/nodes/r01-u05/actions/release", headers=operator)
    assert released.status_code == 202, released.text
    unclassified = {
        "classes": {},
        "parameters": {
            "node_name": "r01-u05",
            "rack": "r01",
            "hardware_profile": "lab-small",
            "image": "rocky-9",
        },
    }
    assert yaml.safe_load(_enc(client, FQDN, operator).text) == unclassified
    mac = client.get("/api/v1/nodes/r01-u05", headers=operator).json()["nics"][0]["mac"]
    callback = flows.boot(client, operator, "r01-u05", mac, r"provisioner\.callback=(\S+)")
    assert client.post(f"{callback.group(1)}/done").status_code == 200
    flows.tick_until(client, operator, "r01-u05", "ready")
    assert yaml.safe_load(_enc(client, FQDN, operator).text) == unclassified
    assert client.get("/api/v1/nodes/r01-u05", headers=operator).json()["role"] == "db-server"


def test_enc_fetch_completes_an_enc_handoff(
    client: TestClient,
    app: FastAPI,
    fleet: FakeFleet,
    admin: dict[str, str],
    viewer: dict[str, str],
) -> None:
    _role(client, admin, name="compute", handoff="enc")
    provisioned = install(client, fleet, "r01-u05", "compute")
    # Active: its own installation was handed off when Puppet first fetched its ENC.
    running = install(client, fleet, "r01-u06", "compute", state="active")
    engine = flows.services(app).engine

    def handoffs(session: Session, node_id: object) -> list[str]:
        kinds = session.exec(select(Event.kind).where(col(Event.node_id) == node_id)).all()
        return [kind for kind in kinds if kind == "handoff"]

    with Session(engine) as session:
        node, deployment = (
            session.get(Node, provisioned.node_id),
            session.get(Deployment, provisioned.deployment_id),
        )
        assert node is not None
        assert deployment is not None
        assert not handoff.completed(session, node, deployment)
        other = session.get(Deployment, running.deployment_id)
        assert other is not None
        running_handoff_at = other.handoff_at
        assert running_handoff_at is not None
        running_handoffs = handoffs(session, running.node_id)
    assert _enc(client, FQDN, viewer).status_code == 200
    assert _enc(client, f"r01-u06.{DOMAIN}", viewer).status_code == 200
    with Session(engine) as session:
        assert handoff.completed(session, node, deployment)
        # Only a provisioned node is handed off; an active one's run changes nothing.
        other = session.get(Deployment, running.deployment_id)
        assert other is not None
        assert other.handoff_at == running_handoff_at
        assert handoffs(session, running.node_id) == running_handoffs
        assert handoffs(session, provisioned.node_id) == ["handoff"]


def test_enc_command_prints_the_yaml_or_fails_quietly(
    live: Live, fleet: FakeFleet, client: TestClient, admin: dict[str, str]
) -> None:
    _role(client, admin, name="compute", parameters={"ntp": ["a", "b"]})
    install(client, fleet, "r01-u05", "compute")
    found = cli(live, "enc", FQDN, token=live.viewer)
    assert found.returncode == 0, found.stderr
    api_yaml = httpx.get(
        f"{live.url}/api/v1/handoff/puppet/enc/{FQDN}",
        headers={"Authorization": f"Bearer {live.viewer}"},
    ).text
    assert found.stdout.decode() == api_yaml
    assert yaml.safe_load(found.stdout)["parameters"]["ntp"] == ["a", "b"]
    missing = cli(live, "enc", f"nosuch.{DOMAIN}", token=live.viewer)
    assert missing.returncode != 0
    assert missing.stdout == b""
    assert len(missing.stderr.decode().strip().splitlines()) == 1


# --- autosign ---------------------------------------------------------------------------


def _utf8string(value: str) -> bytes:
    """DER UTF8String, as Puppet encodes extension request values."""
    data = value.encode()
    assert len(data) < 128
    return bytes([0x0C, len(data)]) + data


def make_csr(
    common_name: str,
    challenge: str | None,
    pp_role: str | None,
    *,
    der_wrapped: bool = True,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    if pp_role is not None:
        value = _utf8string(pp_role) if der_wrapped else pp_role.encode()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(formats.PP_ROLE, value), critical=False
        )
    request = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def openssl_csr(tmp_path: Path, common_name: str, challenge: str, pp_role: str) -> bytes:
    """A CSR from `openssl req`, with attributes the way csr_attributes.yaml sets them."""
    config = tmp_path / "csr.cnf"
    config.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n"
        "req_extensions = ext\n"
        f"[dn]\nCN = {common_name}\n"
        f"[attrs]\nchallengePassword = {challenge}\n"
        f"[ext]\n{formats.PP_ROLE.dotted_string} = ASN1:UTF8String:{pp_role}\n"
    )
    result = subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-config",
            str(config),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tmp_path / "k"),
        ],
        capture_output=True,
        check=True,
    )
    return result.stdout


@pytest.fixture
def compute(client: TestClient, fleet: FakeFleet, admin: dict[str, str]) -> str:
    """The challenge of node r01-u01 (role compute), installed."""
    _role(client, admin, name="compute")
    challenge = install(client, fleet, "r01-u01", "compute").challenge
    assert challenge is not None
    return challenge


def _refused(result: subprocess.CompletedProcess[bytes], why: str) -> None:
    assert result.returncode != 0
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert why in lines[0], lines


def test_csr_reader_takes_puppets_encoding_and_raw_bytes(tmp_path: Path) -> None:
    for der_wrapped in (True, False):
        facts = formats.read_csr(make_csr("n1", "c1", "compute", der_wrapped=der_wrapped))
        assert facts == formats.CsrFacts("n1", "c1", "compute")
    assert formats.read_csr(openssl_csr(tmp_path, "n2", "c-2_x", "db")) == formats.CsrFacts(
        "n2", "c-2_x", "db"
    )
    assert formats.read_csr(make_csr("n3", None, None)) == formats.CsrFacts("n3", None, None)
    for garbage in (b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"):
        with pytest.raises(ValueError, match=r"."):
            formats.read_csr(garbage)


def test_autosign_signs_once_per_installation(
    live: Live, client: TestClient, fleet: FakeFleet, compute: str, tmp_path: Path
) -> None:
    certname = f"r01-u01.{DOMAIN}"
    first = cli(live, "autosign", certname, stdin=make_csr(certname, compute, "compute"))
    assert first.returncode == 0, first.stderr
    assert first.stdout == b""
    # Another key with the same challenge: someone copied csr_attributes.yaml.
    again = cli(live, "autosign", certname, stdin=make_csr(certname, compute, "compute"))
    _refused(again, "used already")
    # A reimage is a new installation with its own challenge; the old one is dead.
    challenge = install(client, fleet, "r01-u01", "compute").challenge
    assert challenge is not None
    assert challenge != compute
    stale = cli(live, "autosign", certname, stdin=make_csr(certname, compute, "compute"))
    _refused(stale, "challenge is not")
    pem = openssl_csr(tmp_path, certname, challenge, "compute")
    assert cli(live, "autosign", certname, stdin=pem).returncode == 0


def test_autosign_refuses_what_does_not_match(
    live: Live, app: FastAPI, compute: str, tmp_path: Path
) -> None:
    name = "r01-u01"
    cases = [
        (name, make_csr(name, "not-the-challenge", "compute"), "challenge is not"),
        (name, openssl_csr(tmp_path, name, "not-the-challenge", "compute"), "challenge is not"),
        (name, make_csr(name, compute, "storage"), "pp_role is 'storage'"),
        (name, openssl_csr(tmp_path, name, compute, "db"), "pp_role is 'db'"),
        (name, make_csr(name, compute, None), "pp_role is None"),
        (name, make_csr(name, None, "compute"), "no challengePassword"),
        (name, make_csr("r01-u02", compute, "compute"), "the CSR is for 'r01-u02'"),
        (name, b"not a CSR at all\n", "not a PEM certificate signing request"),
        ("r09-u09", make_csr("r09-u09", compute, "compute"), "no node has certname"),
    ]
    for certname, pem, why in cases:
        _refused(cli(live, "autosign", certname, stdin=pem), why)
    # A viewer may read the ENC but not approve certificates.
    pem = make_csr(name, compute, "compute")
    _refused(cli(live, "autosign", name, stdin=pem, token=live.viewer), "permission denied")
    # None of the refusals used up the challenge.
    assert cli(live, "autosign", name, stdin=pem).returncode == 0
