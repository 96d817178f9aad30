"""/api/v1/nodes/{ref}/power, /boot-device and /inventory: reading and setting what the
BMC controls directly. Power changes go through the lifecycle actions (power-on, ...);
these routes read live state and set the boot device."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from provisioner import nodes
from provisioner.api.deps import Operator, SessionDep, SettingsDep, VaultDep, Viewer
from provisioner.bmc.base import BmcError, BootDevice, BootSetting, Driver
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.errors import Problem
from provisioner.lifecycle import POWER_STATES, State
from provisioner.models import Bmc, Event, InventoryFact, Node, utcnow
from provisioner.schemas import UtcDatetime

router = APIRouter(prefix="/api/v1/nodes", tags=["bmc"])

_BMC_ERROR_STATUS = {"unreachable": 504, "timed-out": 504, "authentication-failed": 502}


class PowerOut(BaseModel):
    power_state: str


class BootDeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["network", "disk"]
    persistent: bool = False
    uefi: Annotated[bool | None, Field(description="null: as the node's hardware profile says")] = (
        None
    )


class BootDeviceOut(BaseModel):
    device: str
    persistent: bool
    uefi: bool


class InventoryOut(BaseModel):
    source: str
    collected_at: UtcDatetime
    hardware_profile: str | None
    facts: dict[str, Any]


def _pool(request: Request) -> BmcPool:
    pool: BmcPool = request.app.state.bmc_pool
    return pool


def _bmc_problem(err: BmcError) -> Problem:
    return Problem(_BMC_ERROR_STATUS.get(err.kind.value, 502), str(err), bmc_error=err.kind.value)


def _node_and_bmc(session: SessionDep, ref: str) -> tuple[Node, Bmc]:
    node = nodes.find(session, ref)
    bmc = session.get(Bmc, node.id)
    if bmc is None:
        raise Problem(409, f"Node {node.name} has no BMC; give it one with PATCH first.")
    return node, bmc


@router.get("/{ref}/power", response_model=PowerOut)
async def read_power(
    ref: str,
    request: Request,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    _viewer: Viewer,
) -> PowerOut:
    """Ask the BMC now (the node's ``power_state`` is what the last poll saw)."""
    _, bmc = _node_and_bmc(session, ref)
    target = target_for(bmc, vault, settings)
    try:
        state = await _pool(request).call(
            target, lambda d: d.power_state(), deadline=deadline_for(target), idempotent=True
        )
    except BmcError as err:
        raise _bmc_problem(err) from None
    return PowerOut(power_state=state)


@router.put("/{ref}/boot-device", response_model=BootDeviceOut)
async def set_boot_device(
    ref: str,
    body: BootDeviceIn,
    request: Request,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    token: Operator,
) -> BootDeviceOut:
    """Set the next (or every, with ``persistent``) boot to the network or the disk."""
    node, bmc = _node_and_bmc(session, ref)
    if State(node.state) not in POWER_STATES:
        raise Problem(
            409, f"Node {node.name} is {node.state}: its boot device belongs to that step now."
        )
    uefi = body.uefi if body.uefi is not None else _profile_wants_uefi(request, node)
    wanted = BootSetting(BootDevice(body.device), persistent=body.persistent, uefi=uefi)

    def apply(driver: Driver) -> BootSetting:
        driver.set_boot_device(wanted)
        return driver.boot_device()

    target = target_for(bmc, vault, settings)
    try:
        now = await _pool(request).call(target, apply, deadline=2 * deadline_for(target))
    except BmcError as err:
        raise _bmc_problem(err) from None
    message = (
        f"boot device {now.device.value}, {'persistent' if now.persistent else 'next boot only'}"
        f", {'UEFI' if now.uefi else 'BIOS'}"
    )
    await run_in_threadpool(_record, session, node, token.name, message)
    return BootDeviceOut(device=now.device.value, persistent=now.persistent, uefi=now.uefi)


@router.get("/{ref}/boot-device", response_model=BootDeviceOut)
async def read_boot_device(
    ref: str,
    request: Request,
    session: SessionDep,
    vault: VaultDep,
    settings: SettingsDep,
    _viewer: Viewer,
) -> BootDeviceOut:
    _, bmc = _node_and_bmc(session, ref)
    target = target_for(bmc, vault, settings)
    try:
        now = await _pool(request).call(
            target, lambda d: d.boot_device(), deadline=deadline_for(target), idempotent=True
        )
    except BmcError as err:
        raise _bmc_problem(err) from None
    return BootDeviceOut(device=now.device.value, persistent=now.persistent, uefi=now.uefi)


@router.get("/{ref}/inventory", response_model=InventoryOut)
def read_inventory(ref: str, session: SessionDep, _viewer: Viewer) -> InventoryOut:
    """What the last inspection read from the BMC."""
    node = nodes.find(session, ref)
    fact = session.exec(
        select(InventoryFact)
        .where(InventoryFact.node_id == node.id)
        .order_by(col(InventoryFact.id).desc())
    ).first()
    if fact is None:
        raise Problem(404, f"Node {node.name} has not been inspected yet; run the inspect action.")
    return InventoryOut(
        source=fact.source,
        collected_at=fact.collected_at,
        hardware_profile=node.hardware_profile,
        facts=fact.facts,
    )


def _profile_wants_uefi(request: Request, node: Node) -> bool:
    profile = (
        request.app.state.profiles.get(node.hardware_profile) if node.hardware_profile else None
    )
    return bool(profile and profile.boot_mode == "uefi")


def _record(session: SessionDep, node: Node, actor: str, message: str) -> None:
    session.add(
        Event(node_id=node.id, time=utcnow(), actor=actor, kind="boot-device", message=message)
    )
    session.commit()
