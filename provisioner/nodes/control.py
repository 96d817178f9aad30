"""Asking one node's BMC directly, for the API: its power state and boot device as the
BMC reports them now, and setting the boot device. Powering on and off are lifecycle
actions instead (:mod:`provisioner.nodes.actions`), carried out by the reconciler.

A :class:`~provisioner.bmc.base.BmcError` goes up to the caller (the API answers it
with 502 or 504)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import timeline
from provisioner.bmc.base import BootDevice, BootSetting, Driver
from provisioner.bmc.credentials import deadline_for, power_deadline_for, target_for
from provisioner.errors import Problem
from provisioner.lifecycle import POWER_STATES, State
from provisioner.models import Bmc, Node
from provisioner.nodes.queries import find
from provisioner.schemas import BootDeviceIn
from provisioner.services import Services
from provisioner.timeline import EventKind

T = TypeVar("T")


async def power_state(services: Services, session: Session, ref: str) -> str:
    _, bmc = _node_and_bmc(session, ref)
    return await _ask(services, bmc, lambda d: d.power_state(), read=True)


async def boot_device(services: Services, session: Session, ref: str) -> BootSetting:
    _, bmc = _node_and_bmc(session, ref)
    return await _ask(services, bmc, lambda d: d.boot_device(), read=True)


async def set_boot_device(
    services: Services, session: Session, ref: str, body: BootDeviceIn, actor: str
) -> BootSetting:
    """Set the boot device and record it on the node's timeline; returns what the BMC
    reports afterwards."""
    node, bmc = _node_and_bmc(session, ref)
    if State(node.state) not in POWER_STATES:
        raise Problem(
            409, f"Node {node.name} is {node.state}: its boot device belongs to that step now."
        )
    uefi = body.uefi if body.uefi is not None else _profile_wants_uefi(services, node)
    wanted = BootSetting(BootDevice(body.device), persistent=body.persistent, uefi=uefi)

    def apply(driver: Driver) -> BootSetting:
        driver.set_boot_device(wanted)
        return driver.boot_device()

    now = await _ask(services, bmc, apply, read=False)
    message = (
        f"boot device {now.device.value}, {'persistent' if now.persistent else 'next boot only'}"
        f", {'UEFI' if now.uefi else 'BIOS'}"
    )
    await run_in_threadpool(_record, session, node, actor, message)
    return now


def _node_and_bmc(session: Session, ref: str) -> tuple[Node, Bmc]:
    node = find(session, ref)
    bmc = session.get(Bmc, node.id)
    if bmc is None:
        raise Problem(409, f"Node {node.name} has no BMC; give it one with PATCH first.")
    return node, bmc


async def _ask(services: Services, bmc: Bmc, fn: Callable[[Driver], T], *, read: bool) -> T:
    """Call the node's BMC through the pool; reads are retried, changes are not (and may
    wait for the BMC to report them done)."""
    target = target_for(bmc, services.vault, services.settings)
    deadline = deadline_for(target) if read else power_deadline_for(target)
    return await services.bmc_pool.call(target, fn, deadline=deadline, idempotent=read)


def _profile_wants_uefi(services: Services, node: Node) -> bool:
    profile = services.profiles.get(node.hardware_profile) if node.hardware_profile else None
    return bool(profile and profile.boot_mode == "uefi")


def _record(session: Session, node: Node, actor: str, message: str) -> None:
    timeline.note(session, node.id, EventKind.BOOT_DEVICE, actor, message)
    session.commit()
