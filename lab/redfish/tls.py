"""The lab's TLS: one self-signed certificate made when a lab starts, shared by all its
Redfish BMCs, and a fresh one for a BMC told to change its certificate.

Real BMCs ship self-signed certificates, so a client of the lab must either trust this
one (the lab writes it beside its control sockets) or pin it, as it would a BMC's.
Keys are ECDSA P-256: making one takes about a millisecond, so a ``new-certificate``
fault costs nothing noticeable even with a thousand BMCs in the process.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any lab run, short enough that nobody mistakes it for a real one.
_VALID_DAYS = 30


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex: what a client pinning it records."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.fingerprint(hashes.SHA256()).hex()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key never outlives this call on disk.
        with tempfile.TemporaryDirectory(prefix="lab-tls-") as directory:
            cert_file = Path(directory) / "cert.pem"
            key_file = Path(directory) / "key.pem"
            cert_file.write_bytes(self.cert_pem)
            key_file.touch(mode=0o600)
            key_file.write_bytes(self.key_pem)
            context.load_cert_chain(cert_file, key_file)
        return context


def make_certificate(address: str, common_name: str = "provisioner-lab BMC") -> Certificate:
    """A self-signed server certificate for ``address`` (an IP address or a host name),
    also valid for localhost and 127.0.0.1 so that tests may use either."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Provisioner Lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    alternative: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        alternative.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        alternative.append(x509.DNSName(address))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        # Its own issuer: a client trusts it as the CA of the one certificate it signs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_certificate(certificate: Certificate, path: Path) -> None:
    """The certificate (not its key) where clients find it, e.g. for curl --cacert."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(certificate.cert_pem)
    os.replace(tmp, path)
