"""The Ansible dynamic inventory: installed nodes grouped by role and by rack.

Only nodes in ``provisioned`` and ``active`` are listed: anything earlier has no
operating system to connect to yet.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlmodel import Session, col, select

from provisioner.models import Nic, Node, Role
from provisioner.settings import Settings

STATES = ("provisioned", "active")


def group_name(prefix: str, name: str) -> str:
    """Ansible group names are identifiers: letters, digits and underscores."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def inventory(session: Session, settings: Settings) -> dict[str, Any]:
    nodes = session.exec(
        select(Node).where(col(Node.state).in_(STATES)).order_by(col(Node.name))
    ).all()
    boot_ips = _boot_ips(session)
    role_vars = {role.name: role.parameters for role in session.exec(select(Role))}
    groups: dict[str, dict[str, Any]] = {}
    hostvars: dict[str, dict[str, Any]] = {}
    ungrouped: list[str] = []
    for node in nodes:
        hostvars[node.name] = _hostvars(node, settings, boot_ips.get(node.id))
        memberships = []
        if node.role:
            memberships.append((group_name("role", node.role), role_vars.get(node.role, {})))
        if node.rack:
            memberships.append((group_name("rack", node.rack), {}))
        for name, group_vars in memberships:
            group = groups.setdefault(name, {"hosts": []})
            if group_vars:
                group["vars"] = group_vars
            group["hosts"].append(node.name)
        if not memberships:
            ungrouped.append(node.name)
    out: dict[str, Any] = dict(sorted(groups.items()))
    out["ungrouped"] = {"hosts": ungrouped}
    out["all"] = {"children": [*sorted(groups), "ungrouped"]}
    out["_meta"] = {"hostvars": hostvars}
    return out


def _hostvars(node: Node, settings: Settings, boot_ip: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ansible_host": f"{node.name}.{settings.domain}" if settings.domain else node.name,
        "role": node.role,
        "rack": node.rack,
        "rack_unit": node.rack_unit,
        "state": node.state,
        "image": node.image,
        "hardware_profile": node.hardware_profile,
    }
    if boot_ip:
        values["provisioner_boot_ip"] = boot_ip
    return values


def _boot_ips(session: Session) -> dict[uuid.UUID, str]:
    """Each listed node's last boot address, from its PXE NIC when it has one."""
    nics = session.exec(
        select(Nic.node_id, Nic.boot_ip)
        .join(Node, col(Node.id) == col(Nic.node_id))
        .where(col(Node.state).in_(STATES), col(Nic.boot_ip).is_not(None))
        .order_by(col(Nic.pxe))
    ).all()
    # Ordered by pxe ascending: a PXE NIC's address overwrites another NIC's.
    return {node_id: boot_ip for node_id, boot_ip in nics if boot_ip}
