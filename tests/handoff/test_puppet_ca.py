"""The Puppet CA client against Debian's real puppetserver (tests/puppetserver.py): the
certificate a reimaged node's agent would collide with is revoked and deleted, and every
way that can fail says what to fix. One server serves the whole session."""

from __future__ import annotations

import asyncio
import datetime
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import ValidationError

from provisioner.bmc.fake import FakeFleet
from provisioner.handoff.puppet_ca import (
    CaError,
    CleanResult,
    PuppetCa,
    certname_for,
    manual_clean_command,
)
from provisioner.settings import Settings
from tests import flows
from tests.handoff.conftest import DOMAIN, Live, install
from tests.puppetserver import (
    CA_CLIENT,
    CLEAN_UP_RULE,
    OUTSIDER,
    PuppetServer,
    agent_csr,
    free_port,
    running_puppetserver,
)

BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parents[2] / "docs" / "handoff.md"


@pytest.fixture(scope="session")
def autosign_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the CA's autosign policy finds the service to ask: written by the test that
    needs it; without it every CSR waits for a manual signature."""
    return tmp_path_factory.mktemp("autosign") / "service.env"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, autosign_env: Path) -> Iterator[PuppetServer]:
    # The policy as a Puppet server runs it: `provisioner autosign` with its own settings.
    policy = autosign_env.with_name("autosign")
    policy.write_text(
        "#!/bin/sh\n"
        f'[ -r "{autosign_env}" ] || exit 1\n'
        f'. "{autosign_env}"\n'
        f'exec "{BIN / "provisioner"}" autosign "$@"\n'
    )
    policy.chmod(0o755)
    root = tmp_path_factory.mktemp("puppetserver")
    with running_puppetserver(root, autosign=str(policy)) as running:
        yield running


def settings_for(server: PuppetServer, tmp_path: Path, client: str = CA_CLIENT) -> Settings:
    cert = server.client(client)
    return Settings(
        data_dir=tmp_path,
        puppet_ca_url=server.url,
        puppet_ca_cert=cert.cert,
        puppet_ca_key=cert.key,
        puppet_ca_cacert=server.cacert,
    )


def ca_client(server: PuppetServer, tmp_path: Path, client: str = CA_CLIENT) -> PuppetCa:
    ca = PuppetCa.from_settings(settings_for(server, tmp_path, client))
    assert ca is not None
    return ca


def clean(ca: PuppetCa, certname: str) -> CleanResult:
    return asyncio.run(ca.clean(certname))


def failure(ca: PuppetCa, certname: str) -> CaError:
    with pytest.raises(CaError) as caught:
        clean(ca, certname)
    return caught.value


def installed(server: PuppetServer, certname: str) -> x509.Certificate:
    """A node whose agent got its certificate: CSR from csr_attributes.yaml, signed."""
    accepted = server.submit_csr(
        certname, agent_csr(certname, challenge="one-time-challenge", pp_role="compute")
    )
    assert accepted.status_code == 200, accepted.text
    server.sign(certname)
    pem = server.certificate(certname)
    assert pem is not None
    return x509.load_pem_x509_certificate(pem.encode())


def state(server: PuppetServer, certname: str) -> object:
    status = server.status(certname)
    return status and status["state"]


def revoked_serials(server: PuppetServer) -> set[int]:
    response = httpx.get(
        f"{server.url}/puppet-ca/v1/certificate_revocation_list/ca",
        verify=server.ssl_context(),
        timeout=30,
    )
    response.raise_for_status()
    crl = x509.load_pem_x509_crl(response.content)
    return {entry.serial_number for entry in crl}


def test_clean_revokes_and_deletes_a_signed_certificate(
    server: PuppetServer, tmp_path: Path
) -> None:
    certname = "r01-u01.lab.example"
    old = installed(server, certname)
    # The problem being solved: the reinstalled agent's request is ignored.
    refused = server.submit_csr(certname, agent_csr(certname))
    assert refused.status_code == 400
    assert "already has a signed certificate" in refused.text

    result = clean(ca_client(server, tmp_path), certname)

    assert result == CleanResult(
        certname,
        "revoked",
        f"revoked and deleted the certificate of {certname} on the Puppet CA at {server.url}",
    )
    assert old.serial_number in revoked_serials(server)
    assert server.status(certname) is None
    assert server.certificate(certname) is None
    # The reinstalled node's agent now gets a certificate of its own.
    new = installed(server, certname)
    assert new.serial_number != old.serial_number


def test_a_pending_request_is_deleted(server: PuppetServer, tmp_path: Path) -> None:
    certname = "r01-u02.lab.example"
    assert server.submit_csr(certname, agent_csr(certname)).status_code == 200

    result = clean(ca_client(server, tmp_path), certname)

    assert result.outcome == "request-deleted"
    assert result.message == (
        f"deleted the pending certificate request of {certname} on the Puppet CA at "
        f"{server.url} (it had no signed certificate)"
    )
    assert server.status(certname) is None
    installed(server, certname)


def test_a_certname_without_certificate_is_already_clean(
    server: PuppetServer, tmp_path: Path
) -> None:
    result = clean(ca_client(server, tmp_path), "never-installed.lab.example")
    assert result.outcome == "absent"
    assert result.message == (
        f"no certificate or request of never-installed.lab.example on the Puppet CA at {server.url}"
    )


def test_a_clean_interrupted_after_the_revocation_finishes(
    server: PuppetServer, tmp_path: Path
) -> None:
    """A service stopped between the two requests tries again from the start."""
    certname = "r01-u03.lab.example"
    installed(server, certname)
    assert server.ca_cli("revoke", "--certname", certname).returncode == 0
    assert state(server, certname) == "revoked"

    assert clean(ca_client(server, tmp_path), certname).outcome == "revoked"
    assert server.status(certname) is None


def test_a_client_auth_conf_does_not_name_is_told_what_to_add(
    server: PuppetServer, tmp_path: Path
) -> None:
    certname = "r01-u04.lab.example"
    installed(server, certname)
    outsider = ca_client(server, tmp_path, OUTSIDER)

    err = failure(outsider, certname)

    assert err.retryable
    assert f"does not let certname {OUTSIDER} revoke the certificate of {certname}" in str(err)
    assert "HTTP 403" in str(err)
    assert "auth.conf rule" in str(err)
    assert "/puppet-ca/v1/certificate_status/" in str(err)
    assert "PRIVATE KEY" not in str(err)
    assert state(server, certname) == "signed"


def test_a_wrong_ca_certificate_is_reported(server: PuppetServer, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(self_signed("Some Other CA"))
    settings = settings_for(server, tmp_path).model_copy(update={"puppet_ca_cacert": other_ca})
    ca = PuppetCa.from_settings(settings)
    assert ca is not None

    err = failure(ca, "r01-u05.lab.example")

    assert err.retryable
    assert str(err).startswith(
        f"the Puppet CA at {server.url} presented a certificate that {other_ca} "
        "(PROVISIONER_PUPPET_CA_CACERT) does not verify: "
    )
    assert "PRIVATE KEY" not in str(err)


def test_a_client_certificate_of_another_ca_is_reported(
    server: PuppetServer, tmp_path: Path
) -> None:
    cert, key, _ = any_files(tmp_path)
    ca = PuppetCa(server.url, cert, key, server.cacert, timeout=10)

    err = failure(ca, "r01-u05.lab.example")

    assert err.retryable
    # Under TLS 1.3 the refusal comes as an alert after the handshake, or, on a busy
    # machine, as the connection closed before the alert is read: both say what to check.
    assert str(err).startswith(
        (
            f"the TLS handshake with the Puppet CA at {server.url} failed: ",
            f"the Puppet CA at {server.url} closed the connection without answering (",
        )
    ), err
    assert f"check that {cert} (PROVISIONER_PUPPET_CA_CERT) was signed by that CA" in str(err)


def test_an_unreachable_ca_is_retryable(tmp_path: Path) -> None:
    ca = PuppetCa(f"https://127.0.0.1:{free_port()}", *any_files(tmp_path), timeout=5)
    err = failure(ca, "r01-u06.lab.example")
    assert err.retryable
    assert str(err).startswith(f"cannot reach the Puppet CA at {ca.url}: ")


def test_a_ca_that_does_not_answer_times_out(tmp_path: Path) -> None:
    # Listening but never accepting: the kernel completes the TCP handshake, nobody
    # answers the TLS one.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        err = failure(PuppetCa(url, *any_files(tmp_path), timeout=0.5), "r01-u07.lab.example")
    assert err.retryable
    assert str(err) == f"the Puppet CA at {url} did not answer within 0.5 s"


@pytest.mark.parametrize(
    "certname",
    [
        "",
        "R01-U01.lab.example",
        "../certificate_statuses/all",
        "..",
        ".hidden",
        "r01-u01/..",
        "r01-u01?x=1",
        "r01%2fu01",
        "r01 u01",
        "r01-u01\n",
        "x" * 254,
    ],
)
def test_bad_certnames_are_refused_before_any_request(tmp_path: Path, certname: str) -> None:
    # Nothing listens there: a request would fail differently.
    ca = PuppetCa(f"https://127.0.0.1:{free_port()}", *any_files(tmp_path), timeout=5)
    err = failure(ca, certname)
    assert not err.retryable
    assert "is not a Puppet certname" in str(err)
    with pytest.raises(CaError):
        manual_clean_command(certname)


def test_manual_command_and_certnames(tmp_path: Path) -> None:
    assert manual_clean_command("r01-u01.lab.example") == (
        "puppetserver ca clean --certname r01-u01.lab.example"
    )
    plain = Settings(data_dir=tmp_path)
    with_domain = Settings(data_dir=tmp_path, domain="Lab.Example")
    assert certname_for("R01-U01", plain) == "r01-u01"
    assert certname_for("r01-u01", with_domain) == "r01-u01.lab.example"
    assert PuppetCa.from_settings(plain) is None


def test_settings_refuse_a_ca_url_without_its_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as missing:
        Settings(data_dir=tmp_path, puppet_ca_url="https://puppet.lab.example:8140")
    for variable in (
        "PROVISIONER_PUPPET_CA_CERT",
        "PROVISIONER_PUPPET_CA_KEY",
        "PROVISIONER_PUPPET_CA_CACERT",
    ):
        assert f"{variable} is not set" in str(missing.value)

    cert, key, cacert = any_files(tmp_path)
    with pytest.raises(ValidationError) as unreadable:
        Settings(
            data_dir=tmp_path,
            puppet_ca_url="https://puppet.lab.example:8140",
            puppet_ca_cert=cert,
            puppet_ca_key=tmp_path / "nowhere.pem",
            puppet_ca_cacert=cacert,
        )
    assert f"PROVISIONER_PUPPET_CA_KEY ({tmp_path / 'nowhere.pem'}) is not a readable" in str(
        unreadable.value
    )

    with pytest.raises(ValidationError, match="must be an https:// URL"):
        Settings(
            data_dir=tmp_path,
            puppet_ca_url="http://puppet.lab.example:8140",
            puppet_ca_cert=cert,
            puppet_ca_key=key,
            puppet_ca_cacert=cacert,
        )


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, cacert = any_files(tmp_path)
    monkeypatch.setenv("PROVISIONER_PUPPET_CA_URL", "https://puppet.lab.example:8140/")
    monkeypatch.setenv("PROVISIONER_PUPPET_CA_CERT", str(cert))
    monkeypatch.setenv("PROVISIONER_PUPPET_CA_KEY", str(key))
    monkeypatch.setenv("PROVISIONER_PUPPET_CA_CACERT", str(cacert))
    monkeypatch.setenv("PROVISIONER_PUPPET_CA_TIMEOUT", "3")
    settings = Settings(data_dir=tmp_path)
    assert settings.puppet_ca_retry_limit == 900
    assert PuppetCa.from_settings(settings) == PuppetCa(
        "https://puppet.lab.example:8140", cert, key, cacert, 3.0
    )


def test_the_docs_give_the_rule_the_tests_run_with() -> None:
    def squeezed(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip()

    docs = DOCS.read_text()
    assert squeezed(CLEAN_UP_RULE) in squeezed(docs)
    assert f"puppetserver ca generate --certname {CA_CLIENT}" in docs
    assert manual_clean_command("r01-u01.example.com") in docs


def self_signed(common_name: str, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def any_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A certificate, key and CA bundle that load, for tests that never reach a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    paths = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    paths[0].write_bytes(self_signed("anyone", key))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(self_signed("Any CA"))
    return paths


# ---- the whole story: install, sign, reimage, clean, sign again --------------------


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, server: PuppetServer
) -> Settings:
    """The hand-off tests' service, with the real CA configured for clean-up, through
    the client certificate a test names (the one auth.conf allows, by default)."""
    client_name = getattr(request, "param", CA_CLIENT)
    cert = server.client(client_name)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        reconciler=False,
        power_on_rate=1000,
        domain=DOMAIN,
        puppet_server=f"puppet.{DOMAIN}",
        puppet_ca_url=server.url,
        puppet_ca_cert=cert.cert,
        puppet_ca_key=cert.key,
        puppet_ca_cacert=server.cacert,
        puppet_ca_retry_limit=1.0,
    )


def agent_run(server: PuppetServer, certname: str, challenge: str) -> str | None:
    """What a new installation's Puppet agent does first: send the CSR its
    csr_attributes.yaml describes; the CA asks `provisioner autosign`."""
    response = server.submit_csr(
        certname, agent_csr(certname, challenge=challenge, pp_role="compute")
    )
    assert response.status_code in (200, 400), response.text
    return server.certificate(certname)


def test_a_reimaged_node_gets_a_new_certificate_from_a_real_ca(
    client: TestClient,
    fleet: FakeFleet,
    live: Live,
    server: PuppetServer,
    autosign_env: Path,
    admin: dict[str, str],
    operator: dict[str, str],
) -> None:
    autosign_env.write_text(
        f"export PROVISIONER_URL={live.url}\nexport PROVISIONER_TOKEN={live.operator}\n"
    )
    try:
        role = {"name": "compute", "default_image": "rocky-9", "handoff": "enc"}
        assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
        certname = f"rx01.{DOMAIN}"
        first = install(client, fleet, "rx01", "compute")
        assert first.challenge is not None
        signed = agent_run(server, certname, first.challenge)
        assert signed is not None, server.log_tail()
        enc = client.get(f"/api/v1/handoff/puppet/enc/{certname}", headers=operator)
        assert enc.status_code == 200
        flows.tick_until(client, operator, "rx01", "active")

        second = install(client, fleet, "rx01", "compute")  # an existing node is reimaged
        assert first.challenge is not None
        assert second.challenge is not None
        assert server.status(certname) is None or state(server, certname) != "signed"
        cleaned = [
            e["message"]
            for e in client.get("/api/v1/nodes/rx01/events", headers=operator).json()
            if e["kind"] == "puppet-ca"
        ]
        assert len(cleaned) == 1
        assert cleaned[0].startswith(f"revoked and deleted the certificate of {certname}")
        # Signed again: a new certificate, from the new installation's challenge only.
        stale = {"certname": certname, "challenge": first.challenge, "pp_role": "compute"}
        refused = client.post("/api/v1/handoff/puppet/autosign", json=stale, headers=operator)
        assert refused.json()["sign"] is False
        resigned = agent_run(server, certname, second.challenge)
        assert resigned is not None
        assert resigned != signed
        client.get(f"/api/v1/handoff/puppet/enc/{certname}", headers=operator)
        flows.tick_until(client, operator, "rx01", "active")
    finally:
        autosign_env.unlink(missing_ok=True)


@pytest.mark.parametrize("settings", [OUTSIDER], indirect=True)
def test_a_ca_that_refuses_keeps_the_step_waiting_then_fails_the_node(
    client: TestClient,
    fleet: FakeFleet,
    live: Live,
    server: PuppetServer,
    autosign_env: Path,
    admin: dict[str, str],
    operator: dict[str, str],
) -> None:
    autosign_env.write_text(
        f"export PROVISIONER_URL={live.url}\nexport PROVISIONER_TOKEN={live.operator}\n"
    )
    try:
        role = {"name": "compute", "default_image": "rocky-9", "handoff": "enc"}
        assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
        certname = f"rx02.{DOMAIN}"
        first = install(client, fleet, "rx02", "compute")
        assert first.challenge is not None
        assert agent_run(server, certname, first.challenge) is not None
    finally:
        autosign_env.unlink(missing_ok=True)
    reimage = client.post("/api/v1/nodes/rx02/actions/reimage", headers=operator)
    assert reimage.status_code == 202, reimage.text
    flows.tick_until(
        client,
        operator,
        "rx02",
        lambda: any(
            e["kind"] == "puppet-ca"
            for e in client.get("/api/v1/nodes/rx02/events", headers=operator).json()
        ),
        "a word from the CA",
    )
    waiting = client.get("/api/v1/nodes/rx02/events", headers=operator).json()[-1]
    assert waiting["kind"] == "puppet-ca"
    assert waiting["message"].startswith(f"waiting for the Puppet CA to clean {certname}")
    assert "auth.conf" in waiting["message"]
    assert flows.state(client, operator, "rx02") == "provisioning"
    assert state(server, certname) == "signed"  # nothing was booted or lost meanwhile
    time.sleep(1.2)  # past the retry limit (and the backoff) the settings give
    flows.tick_until(client, operator, "rx02", "failed")
    failed = client.get("/api/v1/nodes/rx02", headers=operator).json()
    assert failed["last_error"].startswith(f"puppet-clean: the Puppet CA did not clean {certname}")
