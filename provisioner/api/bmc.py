"""/api/v1/nodes/{ref}/power, /boot-device, /inventory and /bmc/accept-certificate:
reading and setting what the BMC controls directly, and trusting a Redfish BMC's new
certificate. Power changes go through the lifecycle actions (power-on, ...); these
routes read live state and set the boot device."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Body

from provisioner import nodes
from provisioner.api.deps import Operator, ServicesDep, SessionDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.bmc.base import BootSetting
from provisioner.errors import Problem
from provisioner.nodes import certificates, control
from provisioner.schemas import (
    AcceptCertificateIn,
    AcceptCertificateOut,
    BootDeviceIn,
    BootDeviceOut,
    InventoryOut,
    PowerOut,
)

T = TypeVar("T")

router = APIRouter(prefix="/api/v1/nodes", tags=["bmc"], responses=API_ERRORS)

_BMC = (404, (409, "The node has no BMC, or its state owns the boot device now."), 502, 504)


# The longest an API call waits on a BMC: a node may allow its BMC two minutes an
# attempt and ten retries, which no HTTP client waits out. The call goes on in the
# BMC pool; the caller gets a 504 and can ask again.
API_WAIT = 30.0


async def _within_wait(call: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(call, API_WAIT)
    except TimeoutError:
        raise Problem(
            504,
            f"The BMC did not answer within {API_WAIT:g} s; a change asked for may still "
            "take effect. Ask again to see.",
            bmc_error="timed-out",
        ) from None


def _boot_out(setting: BootSetting) -> BootDeviceOut:
    return BootDeviceOut(
        device=setting.device.value, persistent=setting.persistent, uefi=setting.uefi
    )


@router.get("/{ref}/power", response_model=PowerOut, responses=responses(*_BMC))
async def read_power(
    ref: str, services: ServicesDep, session: SessionDep, _viewer: Viewer
) -> PowerOut:
    """Ask the BMC now (the node's ``power_state`` is what the last poll saw)."""
    return PowerOut(power_state=await _within_wait(control.power_state(services, session, ref)))


@router.put(
    "/{ref}/boot-device",
    response_model=BootDeviceOut,
    responses=responses(400, 403, *_BMC, 413, 422),
)
async def set_boot_device(
    ref: str, body: BootDeviceIn, services: ServicesDep, session: SessionDep, token: Operator
) -> BootDeviceOut:
    """Set the next (or every, with ``persistent``) boot to the network or the disk."""
    return _boot_out(
        await _within_wait(control.set_boot_device(services, session, ref, body, token.name))
    )


@router.get("/{ref}/boot-device", response_model=BootDeviceOut, responses=responses(*_BMC))
async def read_boot_device(
    ref: str, services: ServicesDep, session: SessionDep, _viewer: Viewer
) -> BootDeviceOut:
    return _boot_out(await _within_wait(control.boot_device(services, session, ref)))


@router.get(
    "/{ref}/inventory",
    response_model=InventoryOut,
    responses=responses(404, (409, "The node has not been inspected yet.")),
)
def read_inventory(ref: str, session: SessionDep, _viewer: Viewer) -> InventoryOut:
    """What the inspections found: the BMC's facts (source ``ipmi``) and, when the
    deploy agent ran, what it saw from the inside (``agent``, under ``facts.in_band``)."""
    node = nodes.find(session, ref)
    try:
        return nodes.last_inspection(session, node)
    except Problem as problem:
        # The node is there and its inventory comes with its first inspection: a state
        # to change (the detail says how), not a resource that is missing.
        raise Problem(409, problem.detail) from None


@router.post(
    "/{ref}/bmc/accept-certificate",
    response_model=AcceptCertificateOut,
    responses=responses(
        400,
        403,
        404,
        (
            409,
            "The BMC has no certificate (IPMI), is verified against the CA bundle instead, "
            "or presents another certificate than `fingerprint`.",
        ),
        413,
        422,
        502,
        503,
        504,
    ),
)
async def accept_certificate(
    ref: str,
    services: ServicesDep,
    session: SessionDep,
    token: Operator,
    body: Annotated[AcceptCertificateIn | None, Body()] = None,
) -> AcceptCertificateOut:
    """Trust the certificate a Redfish BMC presents now, in place of the one pinned on
    first contact (a BMC whose certificate changed is refused with 502
    ``certificate-refused`` until then). Give ``fingerprint`` to accept only the
    certificate you expect."""
    expected = body.fingerprint if body is not None else None
    accepted = await _within_wait(
        certificates.accept_certificate(services, session, ref, expected, token.name)
    )
    return AcceptCertificateOut(previous=accepted.previous, fingerprint=accepted.fingerprint)
