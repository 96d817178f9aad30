"""Inspection: prove the BMC credentials, read what the BMC knows about the machine
(out-of-band), merge what the deploy agent saw from the inside (in-band) when it ran,
and conclude: the hardware profile that fits, and a role by the role rules."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from provisioner.bmc.base import Driver, Target
from provisioner.bmc.credentials import deadline_for
from provisioner.bmc.pool import BmcPool
from provisioner.models import InventoryFact, Node
from provisioner.profiles import Profile, ProfileSet
from provisioner.role_rules import Position, RoleRules

# Where the facts of each kind of inspection are kept (InventoryFact.source).
OUT_OF_BAND = "ipmi"
IN_BAND = "agent"


@dataclass(frozen=True)
class Found:
    facts: dict[str, Any]
    power_state: str


def _read(driver: Driver) -> tuple[dict[str, Any], str]:
    # One pool call: the login that reads the inventory also answers the power state.
    return driver.inventory().facts, driver.power_state()


async def read_bmc(pool: BmcPool, target: Target) -> Found:
    """Raises :class:`~provisioner.bmc.base.BmcError` when the BMC cannot be read."""
    facts, power_state = await pool.call(
        target, _read, deadline=2 * deadline_for(target), idempotent=True
    )
    return Found(facts, power_state)


def merged(out_of_band: Mapping[str, Any], in_band: Mapping[str, Any] | None) -> dict[str, Any]:
    """One view of both: the BMC's facts, completed by the agent's where the BMC had
    none (its DMI strings), and the agent's whole report under ``in_band``."""
    facts = dict(out_of_band)
    if in_band is None:
        return facts
    system = in_band.get("system") or {}
    for key, inside in (("manufacturer", "vendor"), ("product", "product"), ("serial", "serial")):
        if not facts.get(key) and system.get(inside):
            facts[key] = system[inside]
    facts["in_band"] = dict(in_band)
    return facts


def kept(session: Session, node_id: uuid.UUID) -> dict[str, Any]:
    """The newest facts of each kind of inspection kept for the node, merged."""

    def newest(source: str) -> dict[str, Any] | None:
        found = session.exec(
            select(InventoryFact)
            .where(col(InventoryFact.node_id) == node_id, col(InventoryFact.source) == source)
            .order_by(col(InventoryFact.id).desc())
        ).first()
        return None if found is None else dict(found.facts)

    return merged(newest(OUT_OF_BAND) or {}, newest(IN_BAND))


def profile_for(facts: Mapping[str, Any], profiles: ProfileSet) -> Profile | None:
    """The profile of what the machine says from the inside, else of what its BMC says:
    a profile may be written for either."""
    system = (facts.get("in_band") or {}).get("system") or {}
    inside = {"manufacturer": system.get("vendor", ""), "product": system.get("product", "")}
    # The higher of the two: else the catch-all profile, matching empty DMI strings,
    # would win over the BMC's word.
    found = [p for p in (profiles.match(inside), profiles.match(facts)) if p is not None]
    return max(found, key=lambda p: p.priority, default=None)


def conclude(
    node: Node,
    facts: Mapping[str, Any],
    profiles: ProfileSet,
    rules: RoleRules,
    role_exists: Callable[[str], bool],
) -> tuple[dict[str, Any], str]:
    """The node columns an inspection sets (profile, role by the rules) and its summary."""
    profile = profile_for(facts, profiles)
    changes: dict[str, Any] = {}
    if profile and not node.hardware_profile:
        changes["hardware_profile"] = profile.name
    model = " ".join(str(facts.get(k) or "") for k in ("manufacturer", "product")).strip()
    summary = f"inspected: {model or 'unknown model'}"
    if facts.get("serial"):
        summary += f", serial {facts['serial']}"
    in_band = facts.get("in_band")
    if in_band:
        disks, nics = len(in_band.get("disks") or []), len(in_band.get("nics") or [])
        summary += f", {disks} disk(s) and {nics} NIC(s) seen by the agent"
    summary += f"; profile {profile.name}" if profile else "; no hardware profile matches"
    if node.role is None:
        where = Position(
            node.rack,
            node.rack_unit,
            profile.name if profile else node.hardware_profile,
            dict(facts),
        )
        rule = rules.role_for(where)
        if rule is not None:
            if role_exists(rule.role):
                changes["role"] = rule.role
                summary += f"; role {rule.role} by the role rules"
            else:
                summary += f"; the role rules name role {rule.role!r}, which does not exist"
        if "role" not in changes:
            # Without a role the racking flow ends here, at ready.
            changes["auto_provision"] = False
    return changes, summary
