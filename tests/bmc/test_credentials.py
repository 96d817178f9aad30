"""A BMC row and the service's settings make the Target a driver is given: TLS policy
from the row, the CA bundle and power deadline from the settings."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from provisioner.bmc.credentials import deadline_for, power_deadline_for, target_for
from provisioner.models import Bmc
from provisioner.secrets import Vault
from provisioner.settings import Settings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _row(**fields: Any) -> tuple[Bmc, Vault]:
    vault = Vault(Fernet.generate_key())
    values: dict[str, Any] = {
        "node_id": uuid.uuid4(),
        "driver": "redfish",
        "address": "10.0.0.9",
        "port": 443,
        "username": "root",
        "password_encrypted": vault.encrypt("calvin"),
    }
    values.update(fields)
    return Bmc(**values), vault


def test_a_redfish_row_carries_its_tls_policy_and_the_settings_defaults(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(PEM)
    settings = Settings(data_dir=tmp_path, bmc_ca_bundle=bundle, bmc_power_deadline=45)
    bmc, vault = _row(tls_verify=False, tls_fingerprint="sha256:" + "ab" * 32)
    target = target_for(bmc, vault, settings)
    assert target.driver == "redfish"
    assert target.port == 443
    assert target.password == "calvin"
    assert target.tls_verify is False
    assert target.tls_fingerprint == "sha256:" + "ab" * 32
    assert target.ca_bundle == str(bundle)
    assert target.power_deadline == 45
    assert "calvin" not in repr(target)


def test_no_tls_setting_on_the_row_means_verify(tmp_path: Path) -> None:
    bmc, vault = _row()
    target = target_for(bmc, vault, Settings(data_dir=tmp_path))
    assert target.tls_verify is True
    assert target.ca_bundle is None
    assert target.tls_fingerprint is None
    assert target.power_deadline == 20


def test_a_power_change_may_wait_for_the_bmc_to_report_it(tmp_path: Path) -> None:
    bmc, vault = _row(timeout=2.0, retries=1)
    target = target_for(bmc, vault, Settings(data_dir=tmp_path, bmc_power_deadline=30))
    assert deadline_for(target) == 6.0
    assert power_deadline_for(target) == 2 * 6.0 + 30


def test_a_ca_bundle_must_be_a_readable_pem_file_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"PROVISIONER_BMC_CA_BUNDLE .* not a readable"):
        Settings(data_dir=tmp_path, bmc_ca_bundle=tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate")
    with pytest.raises(ValidationError, match="no PEM certificate"):
        Settings(data_dir=tmp_path, bmc_ca_bundle=empty)
