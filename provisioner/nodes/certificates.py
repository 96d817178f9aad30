"""The certificates of HTTPS (Redfish) BMCs: pinned on first contact, replaced by an
operator.

Without a CA bundle (``PROVISIONER_BMC_CA_BUNDLE``), a Redfish BMC's certificate is
trusted on first use: the driver tells :func:`pin_recorder`'s function the fingerprint,
which stores it on the BMC's row unless one is there already, so that several replicas
meeting the same BMC for the first time agree on one. From then on another certificate
is refused (``certificate-refused``) until an operator accepts it with
:func:`accept_certificate`, which reads the one the BMC presents now.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool

from provisioner import timeline
from provisioner.bmc.base import Driver, Target
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.errors import Problem
from provisioner.models import Bmc
from provisioner.nodes.queries import find
from provisioner.services import Services
from provisioner.timeline import Actor, EventKind

log = logging.getLogger(__name__)


def pin_recorder(engine: Engine) -> Callable[[Target, str], None]:
    """The registry's ``on_pin``: called from BMC worker threads, and returns once the
    pin is committed. Pins met at once (a first power sync meets every BMC) are written
    together: whichever thread takes the lock commits every pin waiting, in one
    transaction, rather than one commit per BMC."""
    waiting: list[tuple[Target, str]] = []
    queue_lock, write_lock = threading.Lock(), threading.Lock()

    def record(target: Target, fingerprint: str) -> None:
        with queue_lock:
            waiting.append((target, fingerprint))
        with write_lock:
            with queue_lock:
                batch = waiting[:]
                waiting.clear()
            if not batch:
                return  # another thread committed it while this one waited
            try:
                _record_pins(engine, batch)
            except SQLAlchemyError as exc:
                # The calls that met the BMCs go on; their next contact pins again.
                log.warning(
                    "could not record the certificates of %d BMC(s), %s:%s among them (%s)",
                    len(batch),
                    batch[0][0].address,
                    batch[0][0].port,
                    type(exc).__name__,
                )

    return record


def _record_pins(engine: Engine, batch: list[tuple[Target, str]]) -> None:
    with Session(engine) as session:
        pinned = []
        # In one order on every replica, so that two batches cannot wait on each other.
        for target, fingerprint in sorted(batch, key=lambda p: (p[0].address, p[0].port)):
            # Only where nothing is pinned: a replica that pinned first wins, and a pin
            # an operator accepted is never overwritten by a driver.
            rows = session.execute(
                update(Bmc)
                .where(col(Bmc.address) == target.address)
                .where(col(Bmc.port) == target.port)
                .where(col(Bmc.tls_fingerprint).is_(None))
                .values(tls_fingerprint=fingerprint)
                .returning(col(Bmc.node_id))
            ).all()
            for (node_id,) in rows:
                message = f"BMC certificate pinned on first contact: {fingerprint}"
                timeline.note(session, node_id, EventKind.UPDATE, Actor.PROVISIONER, message)
                pinned.append((target, fingerprint))
        session.commit()
    for target, fingerprint in pinned:
        log.info("BMC %s:%s: certificate %s pinned", target.address, target.port, fingerprint)


@dataclasses.dataclass(frozen=True)
class Accepted:
    previous: str | None
    fingerprint: str


async def accept_certificate(
    services: Services, session: Session, ref: str, expected: str | None, actor: str
) -> Accepted:
    """Read the certificate the node's BMC presents now and pin it, recording the old
    and new fingerprints on the node's timeline. 409 when the BMC has no certificate to
    pin, or presents another than ``expected``."""
    node = find(session, ref)
    bmc = session.get(Bmc, node.id)
    if bmc is None:
        raise Problem(409, f"Node {node.name} has no BMC; give it one with PATCH first.")
    if bmc.driver != "redfish":
        protocol = "IPMI" if bmc.driver == "ipmi" else f"The {bmc.driver} driver"
        raise Problem(409, f"{protocol} has no certificate: node {node.name}'s BMC has none.")
    if services.settings.bmc_ca_bundle is not None and bmc.tls_verify is not False:
        raise Problem(
            409,
            f"Redfish BMCs are verified against PROVISIONER_BMC_CA_BUNDLE "
            f"({services.settings.bmc_ca_bundle}), not pinned: give the BMC a certificate "
            "that bundle's CAs signed, or add its CA to the bundle.",
        )
    target = dataclasses.replace(
        target_for(bmc, services.vault, services.settings), tls_fingerprint=None
    )
    presented = await services.bmc_pool.call(
        target, _presented, deadline=deadline_for(target), idempotent=True
    )
    if presented is None:
        raise Problem(409, f"The BMC of node {node.name} speaks plain HTTP: it has no certificate.")
    wanted = normal_fingerprint(expected) if expected else None
    if wanted is not None and wanted != presented:
        raise Problem(
            409,
            f"The BMC of node {node.name} presents {presented}, not {wanted}: nothing was "
            "accepted. Check who answers at its address before accepting that one.",
            presented=presented,
        )
    previous = bmc.tls_fingerprint
    message = f"BMC certificate accepted: {presented} (was {previous or 'none'})"
    await run_in_threadpool(_store, session, bmc, presented, actor, message)
    log.info("node %s: %s, by %s", node.name, message, actor)
    return Accepted(previous, presented)


def _store(session: Session, bmc: Bmc, presented: str, actor: str, message: str) -> None:
    bmc.tls_fingerprint = presented
    session.add(bmc)
    timeline.note(session, bmc.node_id, EventKind.UPDATE, actor, message)
    session.commit()


def _presented(driver: Driver) -> str | None:
    fingerprint: Callable[[], str | None] | None = getattr(driver, "certificate_fingerprint", None)
    return fingerprint() if fingerprint is not None else None


def normal_fingerprint(value: str) -> str:
    """``sha256:`` and lower-case hex, whether given with colons or in capitals."""
    return "sha256:" + value.strip().lower().removeprefix("sha256:").replace(":", "")
