"""Turning a stored BMC row into a :class:`Target`: decrypt the password and fill in the
service-wide defaults the row does not override."""

from __future__ import annotations

from provisioner.bmc.base import Target
from provisioner.models import Bmc
from provisioner.secrets import Vault
from provisioner.settings import Settings


def target_for(bmc: Bmc, vault: Vault, settings: Settings) -> Target:
    return Target(
        address=bmc.address,
        port=bmc.port,
        username=bmc.username,
        password=vault.decrypt(bmc.password_encrypted),
        timeout=bmc.timeout if bmc.timeout is not None else settings.bmc_timeout,
        retries=bmc.retries if bmc.retries is not None else settings.bmc_retries,
        cipher_suite=(
            bmc.cipher_suite if bmc.cipher_suite is not None else settings.bmc_cipher_suite
        ),
        driver=bmc.driver,
        power_deadline=settings.bmc_power_deadline,
        tls_verify=bmc.tls_verify is not False,
        ca_bundle=str(settings.bmc_ca_bundle) if settings.bmc_ca_bundle else None,
        tls_fingerprint=bmc.tls_fingerprint,
    )


def deadline_for(target: Target) -> float:
    """How long one call may take in all: every attempt, plus slack for pyghmi's stalls."""
    return target.timeout * (target.retries + 1) + 2.0


def power_deadline_for(target: Target) -> float:
    """How long a power change may take in all: its attempts, then the wait for the BMC
    to report the new state (Redfish accepts an action before carrying it out), so the
    pool does not give up on an action that is only waiting for its read-back."""
    return deadline_for(target) * 2 + target.power_deadline
