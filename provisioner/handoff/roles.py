"""A role's hand-off settings: the write-only webhook secret, and the checks that need
the stored role as well as the request (a patch may complete or break a setting)."""

from __future__ import annotations

import re
from typing import Any

from provisioner.errors import Problem
from provisioner.models import Role
from provisioner.schemas import Handoff, RoleIn, RolePatch
from provisioner.secrets import Vault


def sealed(vault: Vault, role: Role | None, body: RoleIn | RolePatch) -> dict[str, Any]:
    """The columns to store besides ``body``'s own: the encrypted webhook secret.

    ``role`` is the stored role a patch applies to (None on create); the result of the
    patch must still be a complete hand-off configuration.
    """
    secret = body.webhook_secret
    if role is not None:
        given = body.model_dump(exclude_unset=True)
        handoff = given.get("handoff", role.handoff)
        url = given.get("webhook_url", role.webhook_url)
        if handoff == Handoff.WEBHOOK and (
            url is None or (secret is None and not role.webhook_secret_set)
        ):
            raise Problem(
                422,
                "Handoff 'webhook' needs a webhook_url and a webhook_secret; send the missing "
                "one in the same request.",
                errors=[{"field": "handoff", "message": "webhook_url and webhook_secret needed"}],
            )
    if secret is None:
        return {}
    return {"webhook_secret_encrypted": vault.encrypt(secret.get_secret_value())}


def puppet_classes(role: Role) -> list[str]:
    """The role's classes, or ``role::<name>`` (roles and profiles: one role class per
    role, composing profiles). Puppet class names take no hyphens."""
    return role.puppet_classes or [f"role::{re.sub(r'[^a-z0-9_]', '_', role.name.lower())}"]
