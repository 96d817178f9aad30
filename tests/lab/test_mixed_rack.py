"""End to end with both BMC protocols in one rack: a real ``provisioner serve`` (SQLite,
embedded TFTP, reconciler) and ``provisioner-lab up --protocol both``, whose nodes each
have an IPMI BMC (UDP port P) and a Redfish BMC (HTTPS, TCP port P) in front of one
emulated machine. The manifest says which BMC the service is to use: IPMI for some
rows, Redfish for others, ``auto`` for one. Imported once, every node goes to
``active`` through the racking flow, each through the BMC its row named:

- the service powered the Redfish nodes through Redfish and the IPMI nodes through
  IPMI: the lab's HPE-like Redfish BMCs carry out power actions as tasks, which they
  keep, and each BMC counts its open sessions (the lab keeps idle ones for the run);
- the Redfish nodes' certificate was pinned on first contact (trust on first use): the
  API's ``tls_fingerprint`` is the SHA-256 of the lab's certificate;
- the Redfish nodes' inventory came from Redfish (their MACs, which the lab's IPMI FRU
  does not carry), and matched the lab's hardware profile;
- no BMC password appears in anything the API answers.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from lab.redfish.serving import CERTIFICATE_FILE
from tests.lab.conftest import Site, site

PASSWORD = "mixed-rack-Pw-7c1e"  # distinctive, so that any leak of it is found
NODES = 6
# What each row of the manifest says (bmc_driver), and the dialect of the node's Redfish
# BMC. The IPMI nodes' Redfish BMCs are HPE-like too: a power action through them
# would leave a task behind.
DRIVERS = {
    "lab-r01-u01": "ipmi",
    "lab-r01-u02": "redfish",
    "lab-r01-u03": "ipmi",
    "lab-r01-u04": "redfish",
    "lab-r01-u05": "redfish",
    "lab-r01-u06": "auto",
}
DIALECTS = {"lab-r01-u04": "dell", "lab-r01-u05": "supermicro"}
# ``auto`` probes Redfish first, and these BMCs answer it.
FOUND = {name: "redfish" if driver == "auto" else driver for name, driver in DRIVERS.items()}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(
        tmp_path_factory.mktemp("mixed-rack"),
        NODES,
        "--role",
        "compute",
        "--password",
        PASSWORD,
        "--protocol",
        "both",
        "--redfish-dialect",
        "hpe",
        *(f"--redfish-dialect={name}={dialect}" for name, dialect in DIALECTS.items()),
        # Longer than the run: a session the service opened is still there to be seen.
        "--session-timeout",
        "900",
    ) as running:
        yield running


def _manifest_with_drivers(site: Site, path: Path) -> list[dict[str, str]]:
    """The lab's manifest with a ``bmc_driver`` column as DRIVERS says."""
    with site.lab.manifest.open() as rows:
        table = list(csv.DictReader(rows))
    assert [row["name"] for row in table] == list(DRIVERS)
    for row in table:
        row["bmc_driver"] = DRIVERS[row["name"]]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return table


def test_a_rack_of_ipmi_and_redfish_nodes_goes_to_active(mixed: Site, tmp_path: Path) -> None:
    rows = _manifest_with_drivers(mixed, tmp_path / "mixed.csv")
    started = time.monotonic()
    mixed.import_manifest(tmp_path / "mixed.csv")
    nodes = mixed.wait_for(mixed.names, "active", timeout=180)
    elapsed = time.monotonic() - started
    lab_certificate = x509.load_pem_x509_certificate(
        (mixed.lab.control_dir / CERTIFICATE_FILE).read_bytes()
    )
    pin = "sha256:" + hashlib.sha256(lab_certificate.public_bytes(Encoding.DER)).hexdigest()
    for name, node in nodes.items():
        why = mixed.explain([name], 14)
        bmc = node["bmc"]
        assert bmc["driver"] == FOUND[name], (bmc, why)
        assert node["hardware_profile"] == "lab-virtual-server", why
        machine = mixed.machine(name)
        assert machine["state"] == "os-running", (machine, why)
        assert machine["installed"] == "tiny", machine
        redfish = machine["redfish"]
        if FOUND[name] == "redfish":
            assert bmc["tls_fingerprint"] == pin, (bmc, why)
            # Powered through Redfish: an HPE-like BMC's power actions are tasks; the
            # others hold the service's session. The IPMI BMC never had one.
            if redfish["dialect"] == "hpe":
                assert redfish["tasks"] >= 1, machine
            assert redfish["sessions"] >= 1, machine
            assert machine["sessions"] == 0, machine
        else:
            assert bmc["tls_fingerprint"] is None, (bmc, why)
            assert redfish["tasks"] == 0, machine
            assert redfish["sessions"] == 0, machine
            assert machine["sessions"] >= 1, machine
        inventory = _get(mixed, f"/api/v1/nodes/{name}/inventory")
        assert inventory["hardware_profile"] == "lab-virtual-server", inventory
        if FOUND[name] == "redfish":
            row = next(r for r in rows if r["name"] == name)
            assert sorted(inventory["facts"]["macs"]) == sorted(row["macs"].split()), inventory
    print(f"{NODES} IPMI and Redfish nodes from manifest import to active in {elapsed:.1f} s")


def test_no_password_in_what_the_api_answers(mixed: Site) -> None:
    mixed.wait_for(mixed.names, "active", timeout=180)
    api = mixed.service.api
    answers = [api.get("/api/v1/nodes", params={"limit": 1000})]
    for name in mixed.names:
        for path in ("", "/events", "/inventory", "/power", "/boot-device"):
            answers.append(api.get(f"/api/v1/nodes/{name}{path}"))
    for answer in answers:
        assert answer.status_code == 200, (answer.request.url, answer.text)
        assert PASSWORD not in answer.text, answer.request.url
    assert PASSWORD not in mixed.service.log_tail(100_000)


def _get(site: Site, path: str) -> dict[str, Any]:
    answer = site.service.api.get(path)
    assert answer.status_code == 200, (path, answer.text)
    found: dict[str, Any] = answer.json()
    return found
