"""BMC driver ``auto``: before anything is stored, probe the BMC for Redfish and then
IPMI (:mod:`provisioner.bmc.probe`) and put the driver, and the port, that answered in
place of ``auto``; where neither answers, a 422 naming both attempts. For enrollment
(one node or a manifest's rows, several probes at once) and for a node's BMC changed
through PATCH."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.bmc import probe
from provisioner.bmc.base import Target
from provisioner.bmc.credentials import deadline_for
from provisioner.errors import Problem
from provisioner.models import Bmc
from provisioner.schema_types import AUTO_DRIVER
from provisioner.schemas import NodeCreate, NodePatch
from provisioner.secrets import Vault
from provisioner.services import Services


@dataclass(frozen=True)
class Probed:
    """Nodes with every ``auto`` driver replaced by what answered, and a timeline note
    for each node probed, by its index."""

    items: list[NodeCreate]
    notes: dict[int, str]


async def find_auto_drivers(
    services: Services, items: Sequence[NodeCreate], *, rows: bool = False
) -> Probed:
    """Probe the BMC of every item whose driver is ``auto``, several at once. Raises
    :class:`Problem` 422 naming each BMC where neither protocol answered (by manifest
    ``row`` when ``rows``); nothing is stored."""
    asked = [i for i, item in enumerate(items) if item.bmc.driver == AUTO_DRIVER]
    if not asked:
        return Probed(list(items), {})
    timeout = services.settings.bmc_timeout
    targets = []
    for i in asked:
        bmc = items[i].bmc
        password = bmc.password.get_secret_value()
        wait = bmc.timeout if bmc.timeout is not None else timeout
        target = _target(bmc.address, bmc.username, password, wait, bmc.cipher_suite)
        targets.append((target, bmc.port))
    found = await _find(services, targets)
    resolved, notes, errors = list(items), {}, []
    for i, result in zip(asked, found, strict=True):
        if isinstance(result, probe.NothingAnswered):
            where = {"row": i + 1, "field": "bmc_driver"} if rows else {"field": "bmc.driver"}
            errors.append({**where, "message": str(result)})
            continue
        bmc = items[i].bmc.model_copy(update={"driver": result.driver, "port": result.port})
        resolved[i] = items[i].model_copy(update={"bmc": bmc})
        notes[i] = result.describe()
    if errors:
        many = f"{len(errors)} BMCs" if len(errors) > 1 else "The BMC"
        raise Problem(
            422, f"{many} answered neither Redfish nor IPMI; nothing was enrolled.", errors=errors
        )
    return Probed(resolved, notes)


async def find_patch_driver(
    services: Services, vault: Vault, current: Bmc | None, patch: NodePatch
) -> tuple[NodePatch, str | None]:
    """``patch`` with its BMC driver ``auto`` replaced by what answered, and the note
    for the timeline. The BMC probed is the node's with the patch's changes: its address,
    user and password unless the patch gives new ones; the port only if the patch gives
    one (a port belongs to a driver, so the old driver's is not tried)."""
    bmc = patch.bmc
    if bmc is None or bmc.driver != AUTO_DRIVER:
        return patch, None
    address = bmc.address or (current.address if current else None)
    username = bmc.username or (current.username if current else None)
    if bmc.password is not None:
        password: str | None = bmc.password.get_secret_value()
    else:
        password = vault.decrypt(current.password_encrypted) if current else None
    if address is None or username is None or password is None:
        raise Problem(
            422,
            "BMC driver auto needs the BMC's address, username and password to probe it; "
            "give them in the same change.",
            errors=[{"field": "bmc", "message": "address, username and password needed"}],
        )
    timeout = bmc.timeout or (current.timeout if current else None)
    cipher_suite = bmc.cipher_suite or (current.cipher_suite if current else None)
    target = _target(
        address, username, password, timeout or services.settings.bmc_timeout, cipher_suite
    )
    [result] = await _find(services, [(target, bmc.port)])
    if isinstance(result, probe.NothingAnswered):
        raise Problem(
            422,
            "The BMC answered neither Redfish nor IPMI; nothing was changed.",
            errors=[{"field": "bmc.driver", "message": str(result)}],
        )
    found = bmc.model_copy(update={"driver": result.driver, "port": result.port})
    return patch.model_copy(update={"bmc": found}), result.describe()


def _target(
    address: str, username: str, password: str, timeout: float, cipher_suite: int | None
) -> Target:
    return Target(
        address=address,
        username=username,
        password=password,
        timeout=timeout,
        cipher_suite=cipher_suite if cipher_suite is not None else 3,
        driver=AUTO_DRIVER,
    )


async def _find(
    services: Services, targets: list[tuple[Target, int | None]]
) -> list[probe.Found | probe.NothingAnswered]:
    pool = services.bmc_pool

    async def ipmi_login(target: Target) -> None:
        await pool.call(target, lambda _driver: None, deadline=deadline_for(target))

    async with probe.probe_client() as client:
        return await probe.find_drivers(
            targets, redfish_root=probe.redfish_root_over(client), ipmi_login=ipmi_login
        )
