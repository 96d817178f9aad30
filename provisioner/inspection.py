"""Out-of-band inspection: prove the BMC credentials, read what the BMC knows about the
machine, and pick the hardware profile that fits it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.bmc.base import Driver, Target
from provisioner.bmc.credentials import deadline_for
from provisioner.bmc.pool import BmcPool
from provisioner.profiles import ProfileSet


@dataclass(frozen=True)
class Found:
    facts: dict[str, Any]
    power_state: str
    profile: str | None
    summary: str


def _read(driver: Driver) -> tuple[dict[str, Any], str]:
    # One pool call: the login that reads the inventory also answers the power state.
    return driver.inventory().facts, driver.power_state()


async def inspect(pool: BmcPool, target: Target, profiles: ProfileSet) -> Found:
    """Raises :class:`~provisioner.bmc.base.BmcError` when the BMC cannot be read."""
    facts, power_state = await pool.call(
        target, _read, deadline=2 * deadline_for(target), idempotent=True
    )
    profile = profiles.match(facts)
    model = " ".join(str(facts.get(k) or "") for k in ("manufacturer", "product")).strip()
    summary = f"inspected: {model or 'unknown model'}"
    if facts.get("serial"):
        summary += f", serial {facts['serial']}"
    summary += f"; profile {profile.name}" if profile else "; no hardware profile matches"
    return Found(facts, power_state, profile.name if profile else None, summary)
