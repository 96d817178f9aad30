"""Rack manifests name each BMC's protocol (bmc_driver) and TLS policy (bmc_tls_verify):
parsed in both formats, defaulted rack-wide, and bad values refused in the same pass as
every other error."""

from __future__ import annotations

import pytest

from provisioner.manifest import ManifestError, parse_manifest
from provisioner.schemas import NodeCreate

MIXED = """\
defaults: {bmc_username: admin, bmc_password: pw, bmc_driver: redfish}
nodes:
  - {name: r1-u01, bmc_address: 10.0.0.1, macs: "52:54:00:00:00:01"}
  - {name: r1-u02, bmc_address: 10.0.0.2, bmc_driver: ipmi, macs: "52:54:00:00:00:02"}
  - {name: r1-u03, bmc_address: 10.0.0.3, bmc_tls_verify: "false", macs: "52:54:00:00:00:03"}
  - {name: r1-u04, bmc_address: 10.0.0.4, bmc_driver: auto, macs: "52:54:00:00:00:04"}
  - {name: r1-u05, bmc_address: 10.0.0.5, bmc_driver: redfish, bmc_port: "8443"}
"""


def parse(text: str, media_type: str = "application/yaml") -> list[NodeCreate]:
    return parse_manifest(text.encode(), media_type)


def test_a_mixed_rack_gives_each_bmc_its_driver_and_default_port() -> None:
    nodes = parse(MIXED)
    seen = [(n.bmc.driver, n.bmc.port, n.bmc.tls_verify) for n in nodes]
    assert seen == [
        ("redfish", 443, None),
        ("ipmi", 623, None),
        ("redfish", 443, False),
        # auto keeps no port of its own: the probe tries 443, then 623.
        ("auto", None, None),
        ("redfish", 8443, None),
    ]


def test_csv_columns_and_a_manifest_without_them() -> None:
    csv = (
        "name,bmc_address,bmc_username,bmc_password,bmc_driver,bmc_tls_verify\n"
        "a1,10.0.1.1,admin,pw,redfish,TRUE\n"
        "a2,10.0.1.2,admin,pw,,\n"
    )
    first, second = parse(csv, "text/csv")
    assert (first.bmc.driver, first.bmc.port, first.bmc.tls_verify) == ("redfish", 443, True)
    assert (second.bmc.driver, second.bmc.port, second.bmc.tls_verify) == ("ipmi", 623, None)


def test_bad_drivers_and_tls_values_are_all_reported_at_once() -> None:
    text = """\
defaults: {bmc_username: admin, bmc_password: pw}
nodes:
  - {name: b1, bmc_address: 10.0.2.1, bmc_driver: wsman}
  - {name: b2, bmc_address: 10.0.2.2, bmc_tls_verify: flase}
  - {name: b3, bmc_address: 10.0.2.3, bmc_tls_verify: [true]}
  - {name: b4, bmc_address: "not an address!", bmc_driver: redfsh}
"""
    with pytest.raises(ManifestError) as caught:
        parse(text)
    errors = {(e["row"], e["field"]): str(e["message"]) for e in caught.value.errors}
    assert set(errors) == {
        (1, "bmc_driver"),
        (2, "bmc_tls_verify"),
        (3, "bmc_tls_verify"),
        (4, "bmc_address"),
        (4, "bmc_driver"),
    }
    assert "unknown BMC driver 'wsman'" in errors[1, "bmc_driver"]
    assert "auto" in errors[1, "bmc_driver"]
    assert errors[2, "bmc_tls_verify"] == "bmc_tls_verify must be true or false, not 'flase'"
    assert "not a list" in errors[3, "bmc_tls_verify"]


def test_a_bad_rack_wide_tls_default_is_reported_once_on_defaults() -> None:
    text = (
        "defaults: {bmc_username: admin, bmc_password: pw, bmc_tls_verify: nope}\n"
        "nodes:\n  - {name: c1, bmc_address: 10.0.3.1}\n  - {name: c2, bmc_address: 10.0.3.2}\n"
    )
    with pytest.raises(ManifestError) as caught:
        parse(text)
    assert [(e["row"], e["field"]) for e in caught.value.errors] == [
        (None, "defaults.bmc_tls_verify")
    ]
