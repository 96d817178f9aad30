"""Puppet's formats: what an agent puts into its certificate signing request, and the
YAML an external node classifier prints.

Outside the ``handoff`` package on purpose: the CLI (``provisioner enc|autosign``) runs
on the Puppet server at every agent run and must not load the service's modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.oid import AttributeOID, NameOID

# Puppet's registered extension for the node's role (trusted.extensions.pp_role).
PP_ROLE = x509.ObjectIdentifier("1.3.6.1.4.1.34380.1.1.13")
# DER string types an extension value may be wrapped in: UTF8String (what Puppet
# writes), PrintableString, IA5String.
_DER_STRINGS = (0x0C, 0x13, 0x16)


@dataclass(frozen=True)
class CsrFacts:
    common_name: str | None
    challenge: str | None
    pp_role: str | None


def read_csr(pem: bytes) -> CsrFacts:
    """Raises ValueError for anything that is not a well-formed PEM CSR."""
    csr = x509.load_pem_x509_csr(pem)
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = names[0].value if names else None
    try:
        raw_challenge = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
        challenge: str | None = raw_challenge.value.decode()
    except x509.AttributeNotFound:
        challenge = None
    try:
        ext = csr.extensions.get_extension_for_oid(PP_ROLE).value
        pp_role: str | None = _der_string(ext.value).decode()  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pp_role = None
    return CsrFacts(
        common_name=str(common_name) if common_name is not None else None,
        challenge=challenge,
        pp_role=pp_role,
    )


def _der_string(value: bytes) -> bytes:
    """The content of a DER string, or ``value`` itself when it is not one (some tools
    put the bare bytes into the extension)."""
    if len(value) < 2 or value[0] not in _DER_STRINGS:
        return value
    length, start = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    return value[start:] if start + length == len(value) else value


def enc_yaml(classification: dict[str, Any]) -> str:
    return yaml.safe_dump(classification, default_flow_style=False, sort_keys=True)
