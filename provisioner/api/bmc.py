"""/api/v1/nodes/{ref}/power, /boot-device and /inventory: reading and setting what the
BMC controls directly. Power changes go through the lifecycle actions (power-on, ...);
these routes read live state and set the boot device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from provisioner import nodes
from provisioner.api.deps import Operator, SessionDep, Viewer
from provisioner.bmc.base import BmcError, BootDevice, BootSetting, Driver
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.errors import Problem
from provisioner.lifecycle import POWER_STATES, State
from provisioner.models import Bmc, Event, InventoryFact, Node, utcnow
from provisioner.schemas import UtcDatetime

router = APIRouter(prefix="/api/v1/nodes", tags=["bmc"])

T = TypeVar("T")

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


async def _ask(request: Request, bmc: Bmc, fn: Callable[[Driver], T], *, read: bool) -> T:
    """Call the node's BMC through the pool; reads are retried, changes are not."""
    target = target_for(bmc, request.app.state.vault, request.app.state.settings)
    deadline = deadline_for(target) * (1 if read else 2)
    try:
        return await _pool(request).call(target, fn, deadline=deadline, idempotent=read)
    except BmcError as err:
        raise _bmc_problem(err) from None


def _boot_out(setting: BootSetting) -> BootDeviceOut:
    return BootDeviceOut(
        device=setting.device.value, persistent=setting.persistent, uefi=setting.uefi
    )


@router.get("/{ref}/power", response_model=PowerOut)
async def read_power(ref: str, request: Request, session: SessionDep, _viewer: Viewer) -> PowerOut:
    """Ask the BMC now (the node's ``power_state`` is what the last poll saw)."""
    _, bmc = _node_and_bmc(session, ref)
    return PowerOut(power_state=await _ask(request, bmc, lambda d: d.power_state(), read=True))


@router.put("/{ref}/boot-device", response_model=BootDeviceOut)
async def set_boot_device(
    ref: str, body: BootDeviceIn, request: Request, session: SessionDep, token: Operator
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

    now = await _ask(request, bmc, apply, read=False)
    message = (
        f"boot device {now.device.value}, {'persistent' if now.persistent else 'next boot only'}"
        f", {'UEFI' if now.uefi else 'BIOS'}"
    )
    await run_in_threadpool(_record, session, node, token.name, message)
    return _boot_out(now)


@router.get("/{ref}/boot-device", response_model=BootDeviceOut)
async def read_boot_device(
    ref: str, request: Request, session: SessionDep, _viewer: Viewer
) -> BootDeviceOut:
    _, bmc = _node_and_bmc(session, ref)
    return _boot_out(await _ask(request, bmc, lambda d: d.boot_device(), read=True))


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
