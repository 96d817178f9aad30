"""``bmc_driver: auto``: which protocol a BMC speaks, found by asking.

Redfish first: an unauthenticated HTTPS GET of the service root ``/redfish/v1`` that
answers JSON with ``RedfishVersion`` (the DMTF requires the root to answer without
credentials). No credentials go out and the answer only tells the protocol, so the
certificate is not checked here: the driver pins or verifies it on its first contact.
Then IPMI: a login with the node's credentials through the BMC pool. What answered is
recorded as the BMC's driver, with the port that answered.

Both attempts are made by callers' functions (:data:`RedfishRoot`, :data:`IpmiLogin`)
so the order, defaults and the report of what failed stay free of I/O here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from provisioner.bmc.base import BmcError, Target

REDFISH_PORT = 443
IPMI_PORT = 623
DEFAULT_PORTS = {"ipmi": IPMI_PORT, "redfish": REDFISH_PORT, "fake": IPMI_PORT}
"""A BMC's port when its input names none, by driver."""
ROOT = "/redfish/v1"
REDFISH_TIMEOUT = 3.0
"""Seconds the service root may take: a Redfish BMC answers it at once, and every BMC
that is not one makes its enrollment wait this long first."""
CONCURRENT_PROBES = 32
"""Probes in flight at once for one import: a rack at a time, not one BMC after another,
without a thousand-row manifest opening a thousand connections."""

RedfishRoot = Callable[[str, int], Awaitable[None]]
"""Raises :class:`NotRedfish` unless a Redfish service root answers at (address, port)."""
IpmiLogin = Callable[[Target], Awaitable[None]]
"""Logs in to the IPMI BMC ``target`` names, or raises :class:`BmcError`."""


class NotRedfish(Exception):
    """What answered at the address instead of a Redfish service root, as a phrase."""


@dataclass(frozen=True)
class Found:
    driver: str
    port: int

    def describe(self) -> str:
        protocol = "Redfish (HTTPS)" if self.driver == "redfish" else "IPMI"
        return f"BMC driver auto: {protocol} answered on port {self.port}; driver {self.driver}"


class NothingAnswered(Exception):
    """Neither protocol answered; ``str()`` names both attempts and what each met."""

    def __init__(self, address: str, attempts: Sequence[str]) -> None:
        super().__init__(
            f"no BMC protocol answered at {address}: {'; '.join(attempts)}. Check the address, "
            "port and credentials, or name the driver (ipmi or redfish) instead of auto."
        )


async def find_driver(
    target: Target,
    port: int | None,
    *,
    redfish_root: RedfishRoot,
    ipmi_login: IpmiLogin,
) -> Found:
    """Redfish on ``port`` (443 if None), else IPMI on ``port`` (623 if None) with
    ``target``'s credentials; raises :class:`NothingAnswered`."""
    redfish_port = port if port is not None else REDFISH_PORT
    try:
        await redfish_root(target.address, redfish_port)
        return Found("redfish", redfish_port)
    except NotRedfish as exc:
        redfish_failed = f"Redfish at https://{target.address}:{redfish_port}{ROOT}: {exc}"
    ipmi_port = port if port is not None else IPMI_PORT
    try:
        await ipmi_login(_as_ipmi(target, ipmi_port))
        return Found("ipmi", ipmi_port)
    except BmcError as exc:
        ipmi_failed = f"IPMI at {target.address} port {ipmi_port}: {exc}"
    raise NothingAnswered(target.address, [redfish_failed, ipmi_failed])


async def find_drivers(
    targets: Sequence[tuple[Target, int | None]],
    *,
    redfish_root: RedfishRoot,
    ipmi_login: IpmiLogin,
    limit: int = CONCURRENT_PROBES,
) -> list[Found | NothingAnswered]:
    """:func:`find_driver` for each (target, port), ``limit`` at a time, in order."""
    gate = asyncio.Semaphore(limit)

    async def one(target: Target, port: int | None) -> Found | NothingAnswered:
        async with gate:
            try:
                return await find_driver(
                    target, port, redfish_root=redfish_root, ipmi_login=ipmi_login
                )
            except NothingAnswered as exc:
                return exc

    return list(await asyncio.gather(*(one(target, port) for target, port in targets)))


def _as_ipmi(target: Target, port: int) -> Target:
    return Target(
        address=target.address,
        username=target.username,
        password=target.password,
        port=port,
        timeout=target.timeout,
        retries=0,
        cipher_suite=target.cipher_suite,
        driver="ipmi",
    )


def redfish_root_over(client: httpx.AsyncClient) -> RedfishRoot:
    """A :data:`RedfishRoot` asking through ``client`` (which should not verify
    certificates: see the module's docstring)."""

    async def ask(address: str, port: int) -> None:
        host = f"[{address}]" if ":" in address else address
        try:
            reply = await client.get(f"https://{host}:{port}{ROOT}", follow_redirects=True)
        except httpx.TimeoutException:
            raise NotRedfish("no answer within the probe's time") from None
        except httpx.HTTPError as exc:
            raise NotRedfish(f"no HTTPS service ({type(exc).__name__})") from None
        verdict = service_root_verdict(reply.status_code, reply.content)
        if verdict is not None:
            raise NotRedfish(verdict)

    return ask


def service_root_verdict(status: int, body: bytes) -> str | None:
    """None when (status, body) is a Redfish service root, else why it is not."""
    if status != 200:
        return f"HTTP {status} instead of the service root"
    try:
        root = json.loads(body)
    except ValueError:
        return "an answer that is not JSON"
    if not isinstance(root, dict) or not isinstance(root.get("RedfishVersion"), str):
        return "JSON without RedfishVersion"
    return None


def probe_client(timeout: float = REDFISH_TIMEOUT) -> httpx.AsyncClient:
    """The HTTPS client of the Redfish half: no certificate checks (no credentials are
    sent), a short timeout, a connection per BMC at most."""
    return httpx.AsyncClient(verify=False, timeout=timeout)  # noqa: S501
