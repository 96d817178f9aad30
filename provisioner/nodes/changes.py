"""Changing and deleting nodes. A change is refused with 412 if the caller's ETag is
stale and with 409 if another request changed the node meanwhile: concurrent writers
cannot lose each other's updates (see :func:`saving`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from provisioner import timeline
from provisioner.bmc.probe import DEFAULT_PORTS
from provisioner.errors import Problem
from provisioner.lifecycle import Outcome, State
from provisioner.models import Bmc, Nic, Node
from provisioner.nodes.checks import (
    IPMI_PORT,
    Claim,
    bmc_claim,
    conflict_errors,
    in_api_terms,
    rack_position,
    reference_errors,
)
from provisioner.schema_types import AUTO_DRIVER
from provisioner.schemas import NodePatch
from provisioner.secrets import Vault
from provisioner.timeline import EventKind

log = logging.getLogger(__name__)

# Clears a node flagged by the power sync: an operator has acted on its BMC.
POWER_RESET: dict[str, Any] = {"power_failures": 0, "power_reason": None}
_TAKEN = "The name, a MAC, the BMC or the rack position is taken."


@contextmanager
def saving(session: Session, node: Node) -> Iterator[None]:
    """Commit what the block wrote through the timeline, or answer 409 if the node
    changed since it was read (another request won the race)."""
    try:
        yield
    except timeline.Stale:
        session.rollback()
        raise Problem(
            409, "The node changed while this request ran; read it again and retry."
        ) from None
    session.commit()
    session.refresh(node)


def etag(node: Node) -> str:
    return f'"{node.version}"'


_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


def check_if_match(node: Node, if_match: str | None) -> None:
    """RFC 9110 section 13.1.1: the change goes ahead only if one of the listed entity
    tags is the node's, compared strongly: a weak tag (W/"7") names a version only
    roughly, so it never matches."""
    if if_match is None or if_match.strip() == "*":
        return
    tags = [t.strip() for t in if_match.split(",")]
    if not all(_ENTITY_TAG.fullmatch(t) for t in tags):
        raise Problem(
            400,
            f"If-Match takes entity tags in double quotes, as the ETag header gives them "
            f'(here {etag(node)}), or "*"; not {if_match[:40]!r}.',
        )
    if etag(node) not in tags:
        raise Problem(
            412,
            f"The node has changed (its ETag is now {etag(node)}); fetch it again and "
            "reapply your change.",
        )


def change(
    session: Session,
    vault: Vault,
    node: Node,
    patch: NodePatch,
    actor: str,
    if_match: str | None,
    *,
    inspect: bool = False,
    note: str | None = None,
) -> Node:
    """Apply ``patch``. A ``discovered`` node given a BMC is enrolled by it (the
    lifecycle's discovered --enroll--> enrolled); with ``inspect`` the reconciler then
    inspects it, as it does a node enrolled by POST /api/v1/nodes. ``note`` (what a
    probe found) goes with the change's event."""
    check_if_match(node, if_match)
    if patch.bmc is not None and patch.bmc.driver == AUTO_DRIVER:
        # Never stored: the API's find_patch_driver replaces it with what answered.
        raise Problem(
            422,
            "BMC driver auto is probed by PATCH /api/v1/nodes/{name} only; choose a driver.",
            errors=[{"field": "bmc.driver", "message": "not probed"}],
        )
    given = patch.model_fields_set
    if errors := reference_errors(session, [patch]):
        raise Problem(
            422,
            "The change names a role or image that does not exist.",
            errors=in_api_terms(errors),
        )
    claim = Claim(
        patch.name if "name" in given else None,
        tuple(n.mac for n in patch.nics or ()),
        rack_position(
            patch.rack if "rack" in given else node.rack,
            patch.rack_unit if "rack_unit" in given else node.rack_unit,
        ),
        *_bmc_wanted(session, node, patch),
    )
    if errors := conflict_errors(session, [claim], exclude=[node.id]):
        raise Problem(409, _TAKEN, errors=in_api_terms(errors))
    try:
        _apply(session, vault, node, patch, actor, inspect=inspect, note=note)
    except IntegrityError:
        # Another request took what the check above found free; anything else the
        # database refused is not a conflict, and is answered as what it is.
        session.rollback()
        if errors := conflict_errors(session, [claim], exclude=[node.id]):
            raise Problem(409, _TAKEN, errors=in_api_terms(errors)) from None
        raise
    return node


def _bmc_wanted(
    session: Session, node: Node, patch: NodePatch
) -> tuple[tuple[str, int] | None, str]:
    """The BMC (address, port) ``patch`` gives the node, if it changes them, and the
    field a conflict over it is reported on: the one the patch changes (of both, as
    for a new BMC: see :func:`~provisioner.nodes.checks.bmc_claim`)."""
    if patch.bmc is None:
        return None, "bmc_address"
    given = patch.bmc.model_fields_set & {"address", "port"}
    current = session.get(Bmc, node.id)
    if current is None:
        if patch.bmc.address is None:
            return None, "bmc_address"  # refused as incomplete when applied
        port = patch.bmc.port if patch.bmc.port is not None else _default_port(patch.bmc.driver)
        return bmc_claim(patch.bmc.address, port, "port" in given)
    if not given and _kept_port(current, patch) == current.port:
        return None, "bmc_address"
    # Given, they are not None (a null is refused for them); left out, they are kept.
    address = patch.bmc.address if patch.bmc.address is not None else current.address
    port = patch.bmc.port if patch.bmc.port is not None else _kept_port(current, patch)
    if given == {"address"}:
        return (address, port), "bmc_address"
    return bmc_claim(address, port, "port" in given)


def _apply(
    session: Session,
    vault: Vault,
    node: Node,
    patch: NodePatch,
    actor: str,
    *,
    inspect: bool,
    note: str | None,
) -> None:
    given = patch.model_fields_set
    changes: dict[str, Any] = {
        field: getattr(patch, field)
        for field in ("name", "rack", "rack_unit", "role", "hardware_profile", "image")
        if field in given
    }
    touched = sorted(given)
    if patch.bmc is not None:
        _change_bmc(session, vault, node, patch)
        # New BMC settings deserve a fresh start of the power sync.
        changes.update(POWER_RESET)
    if patch.nics is not None:
        session.execute(sql_delete(Nic).where(col(Nic.node_id) == node.id))
        if patch.nics:
            rows = [{"node_id": node.id, "mac": n.mac, "pxe": n.pxe} for n in patch.nics]
            session.execute(insert(Nic), rows)
    message = f"changed {', '.join(touched) or 'nothing'}"
    if note:
        message = f"{message}; {note}"
    with saving(session, node):
        if patch.bmc is not None and node.state == State.DISCOVERED.value:
            changes.update(auto_inspect=inspect, auto_provision=inspect)
            message = f"enrolled with a BMC: {message}"
            timeline.transition(session, node, Outcome.ENROLL, actor, message, changes=changes)
        else:
            timeline.change(session, node, changes, EventKind.UPDATE, actor, message)


# What a pinned certificate belongs to.
_PINNED_TO = ("address", "port", "driver")


def _default_port(driver: str | None) -> int:
    return DEFAULT_PORTS.get(driver or "ipmi", IPMI_PORT)


def _kept_port(current: Bmc, patch: NodePatch) -> int:
    """A BMC that changes driver but not port moves from the old driver's default port
    to the new one's (623 to 443, say); a port of its own stays."""
    assert patch.bmc is not None
    driver = patch.bmc.driver
    if driver is None or driver == current.driver or current.port != _default_port(current.driver):
        return current.port
    return _default_port(driver)


def _change_bmc(session: Session, vault: Vault, node: Node, patch: NodePatch) -> None:
    assert patch.bmc is not None
    bmc = session.get(Bmc, node.id)
    fields = patch.bmc.model_dump(exclude_unset=True, exclude={"password"})
    if patch.bmc.tls_verify is False:
        log.warning(
            "node %s: the certificate of its BMC will not be checked (tls_verify false)",
            node.name,
        )
    if bmc is None:
        missing = [f for f in ("address", "username", "password") if getattr(patch.bmc, f) is None]
        if missing:
            raise Problem(
                422,
                "This node has no BMC yet: give address, username and password.",
                errors=[{"field": f"bmc.{f}", "message": "required"} for f in missing],
            )
        fields.setdefault("port", _default_port(patch.bmc.driver))
        bmc = Bmc(node_id=node.id, password_encrypted="", **fields)
    else:
        fields.setdefault("port", _kept_port(bmc, patch))
        moved = any(fields.get(k, getattr(bmc, k)) != getattr(bmc, k) for k in _PINNED_TO)
        # The schema refuses null where a field cannot be cleared; a null left here (the
        # timeout, retries, cipher suite) returns the BMC to the service's default.
        for key, value in fields.items():
            setattr(bmc, key, value)
        if moved:
            # The pinned certificate was another BMC's: the new one is pinned on contact.
            bmc.tls_fingerprint = None
    if patch.bmc.password is not None:
        bmc.password_encrypted = vault.encrypt(patch.bmc.password.get_secret_value())
    session.add(bmc)
    session.flush()


def remove(session: Session, node: Node, actor: str) -> None:
    state = State(node.state)
    if state in (State.INSPECTING, State.PROVISIONING, State.WIPING) and not node.maintenance:
        raise Problem(
            409,
            f"The node is {state.value}; abort it first, or set maintenance-on to delete it "
            "anyway.",
        )
    session.execute(sql_delete(Node).where(col(Node.id) == node.id))
    session.commit()
    log.info("node %s (%s) deleted by %s", node.name, node.id, actor)
