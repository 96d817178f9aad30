"""What happens when a node is provisioned, reimaged or wiped, step by step.

A deployment (see ``boot/deployments.py``) carries its current step; each reconciler
tick does at most one step of a node and records where it got to, so a restart resumes
from the last recorded step, and a step done twice is harmless (setting a boot device
again, powering on a machine that is on). While the installer runs, the node sleeps
until its deadline (``Node.wake_at``); the installer's ``done``/``failed`` callback
wakes it.

    provision, reimage:
      network  next boot from the network (one-time, so a reboot cannot loop)
      power    within the limits and the stagger: power on, or cycle if it is on
               (``powering`` while the slot is taken but the power-on not yet done:
               a replica that dies there leaves it to be started over)
      install  wait for the installer's callback, up to the deployment's deadline
      disk     boot from disk from now on
      reboot   power cycle into the installed system          -> provisioned
      handoff  wait until the role's hand-off has completed      -> active
    wipe (release):
      network, power, install (the wipe image calls back done), then
      off      power off                                        -> ready
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import handoff, nodes, power
from provisioner.bmc.base import BmcError, BootDevice, BootSetting
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.boot import deployments
from provisioner.lifecycle import Action, Outcome, State
from provisioner.models import Bmc, Deployment, Node, Role, utcnow
from provisioner.profiles import ProfileSet
from provisioner.schemas import ActionRequest
from provisioner.secrets import Vault
from provisioner.settings import Settings

log = logging.getLogger(__name__)

# (node id, outcome, changes, message) -> recorded; the reconciler's own recording.
Finish = Callable[[uuid.UUID, Outcome, dict[str, Any], str], None]
Record = Callable[..., bool]

# How often a node waiting for its hand-off, or for room under the limits, is looked at.
POLL = timedelta(seconds=1)


class Deploying:
    def __init__(
        self,
        engine: Engine,
        vault: Vault,
        pool: BmcPool,
        settings: Settings,
        profiles: Callable[[], ProfileSet],
        finish: Finish,
        record: Record,
    ) -> None:
        self.engine = engine
        self.profiles = profiles
        self.vault = vault
        self.pool = pool
        self.settings = settings
        self._finish = finish
        self._record = record
        # Power-on staggering: the next moment this replica may power a machine on.
        self._next_power_on = 0.0
        # Checking the limits and taking a slot must not interleave within a replica.
        self._slots = asyncio.Lock()

    # ---- entry points ------------------------------------------------------------

    async def advance(self, node: Node, bmc: Bmc | None) -> None:
        """Do the node's next step."""
        deployment = await run_in_threadpool(self._current, node.id)
        if deployment is None:
            await self._fail(node, "deploy", "the node has no deployment to carry out")
            return
        step = deployment.step
        try:
            if node.state == State.PROVISIONED.value:
                await run_in_threadpool(self._handoff, node, deployment)
            elif step == "network":
                await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                await run_in_threadpool(self._goto, node, deployment, "power", None, "")
            elif step == "power":
                await self._power_on(node, bmc, deployment)
            elif step == "powering":
                # The replica that took the slot ended before it recorded the power-on:
                # the machine may be off, or may have used up its one-time network boot.
                # Start the boot over; the slot is still the node's.
                await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                await self._boot_installer(node, bmc, deployment)
            elif step == "install":
                await run_in_threadpool(self._install, node, deployment)
            elif step == "disk":
                await self._boot_device(node, bmc, BootDevice.DISK, persistent=True)
                await run_in_threadpool(self._goto, node, deployment, "reboot", None, "")
            elif step == "reboot":
                await self._power(node, bmc, "cycle")
                await run_in_threadpool(self._deployed, node, deployment)
            elif step == "off":
                await self._power(node, bmc, "off")
                await run_in_threadpool(
                    self._finish, node.id, Outcome.WIPED, {"wake_at": None}, "disks wiped"
                )
            else:
                await self._fail(node, step, f"unknown step {step!r}")
        except _StepFailed as failure:
            await self._fail(node, step, str(failure))

    def auto_provision(self, node: Node) -> None:
        """The racking flow: a freshly inspected node with a role is provisioned with the
        role's default image, if the role says so."""
        with Session(self.engine) as session:
            role = session.get(Role, node.role) if node.role else None
            current = session.get(Node, node.id)
            if current is None or current.state != State.READY.value:
                return
            if role is None or not role.auto_provision:
                # Nothing to do now, and nothing later: a role set afterwards needs an
                # explicit provision.
                session.execute(
                    update(Node).where(col(Node.id) == node.id).values(auto_provision=False)
                )
                session.commit()
                return
            image = node.image or role.default_image or self.settings.default_image
            nodes.act(
                session,
                current,
                Action.PROVISION,
                ActionRequest(role=role.name, image=image, reason="racking flow"),
                "provisioner",
                vault=self.vault,
                deploy_timeout=self.settings.deploy_timeout,
            )

    # ---- steps -------------------------------------------------------------------

    async def _power_on(self, node: Node, bmc: Bmc | None, deployment: Deployment) -> None:
        async with self._slots:
            full = await run_in_threadpool(self._limits_reached, node, deployment)
            if full:
                await run_in_threadpool(self._sleep, node.id, utcnow() + POLL)
                return
            # Taking the slot (step "powering") before the BMC call keeps the next
            # node's limit check honest. Should this replica die before the power-on is
            # recorded, the node is looked at again when its lease has run out.
            retry_at = utcnow() + timedelta(seconds=self.settings.lease_seconds)
            await run_in_threadpool(self._goto, node, deployment, "powering", retry_at, "")
        await self._boot_installer(node, bmc, deployment)

    async def _boot_installer(self, node: Node, bmc: Bmc | None, deployment: Deployment) -> None:
        await self._stagger()
        state = await self._power(node, bmc, "cycle")
        await run_in_threadpool(self._installing, node, deployment)
        await run_in_threadpool(
            self._record,
            node.id,
            {"power_state": state, "power_checked_at": utcnow()},
            "power",
            f"powered on to boot {deployment.kind} deployment {str(deployment.id)[:8]}",
        )

    def _installing(self, node: Node, deployment: Deployment) -> None:
        """Step ``install``: sleep until the deadline, unless the installer has already
        called back ``done`` or ``failed`` (its wake-up is not to be undone)."""
        live = (
            select(Deployment.id)
            .where(
                col(Deployment.id) == deployment.id, col(Deployment.status).in_(deployments.LIVE)
            )
            .exists()
        )
        with Session(self.engine) as session:
            self._set_step(session, deployment.id, "install")
            session.execute(
                update(Node)
                .where(col(Node.id) == node.id, live)
                .values(wake_at=_aware(deployment.expires_at))
            )
            session.commit()
        log.info("node %s: %s deployment at step install", node.name, deployment.kind)

    def _install(self, node: Node, deployment: Deployment) -> None:
        if deployment.status == "done":
            following = "off" if deployment.kind == "wipe" else "disk"
            self._goto(node, deployment, following, None, "")
        elif deployment.status == "failed":
            self._fail_now(node, "install", f"the installer reported failure: {deployment.message}")
        elif deployment.status not in deployments.LIVE:
            self._fail_now(node, "install", f"the deployment ended ({deployment.status})")
        elif utcnow() >= _aware(deployment.expires_at):
            last = "started" if deployment.status == "started" else "never started"
            self._fail_now(
                node,
                "install",
                f"no installer callback within {self.settings.deploy_timeout:.0f} s "
                f"(installer {last})",
            )
        else:
            self._sleep(node.id, _aware(deployment.expires_at))

    def _deployed(self, node: Node, deployment: Deployment) -> None:
        with Session(self.engine) as session:
            current = session.get(Node, node.id)
            if current is None:
                return
            handoff.begin(session, self.vault, current, deployment)
            self._set_step(session, deployment.id, "handoff")
            session.commit()
        self._finish(
            node.id,
            Outcome.DEPLOYED,
            {"wake_at": None},
            f"{deployment.image} installed as role {deployment.role}; handing off",
        )

    def _handoff(self, node: Node, deployment: Deployment) -> None:
        with Session(self.engine) as session:
            current = session.get(Node, node.id)
            if current is None:
                return
            done = handoff.completed(session, current, deployment)
            if done:
                handoff.notify(session, self.vault, current, "node.active", deployment)
                session.commit()
        if done:
            self._finish(node.id, Outcome.HANDED_OFF, {"wake_at": None}, "hand-off completed")
            return
        finished = _aware(deployment.finished_at or deployment.created_at)
        if utcnow() - finished > timedelta(seconds=self.settings.handoff_timeout):
            self._fail_now(node, "handoff", "the role's hand-off did not complete in time")
        else:
            self._sleep(node.id, utcnow() + POLL)

    # ---- BMC ---------------------------------------------------------------------

    async def _boot_device(
        self, node: Node, bmc: Bmc | None, device: BootDevice, *, persistent: bool
    ) -> None:
        target = self._target(bmc)
        profile = self.profiles().get(node.hardware_profile) if node.hardware_profile else None
        # A UEFI machine told to boot "network" in legacy mode would try BIOS PXE.
        uefi = profile is not None and profile.boot_mode == "uefi"
        setting = BootSetting(device, persistent=persistent, uefi=uefi)
        try:
            await self.pool.call(
                target, lambda d: d.set_boot_device(setting), deadline=deadline_for(target)
            )
        except BmcError as err:
            raise _StepFailed(f"setting boot device {device.value} failed: {err}") from err

    async def _power(self, node: Node, bmc: Bmc | None, action: str) -> str:
        try:
            return await power.carry_out(self.pool, self._target(bmc), action)
        except BmcError as err:
            raise _StepFailed(f"power {action} failed: {err}") from err

    def _target(self, bmc: Bmc | None) -> Any:
        if bmc is None:
            raise _StepFailed("the node has no BMC")
        return target_for(bmc, self.vault, self.settings)

    async def _stagger(self) -> None:
        now = time.monotonic()
        at = max(now, self._next_power_on)
        self._next_power_on = at + 1 / self.settings.power_on_rate
        if at > now:
            await asyncio.sleep(at - now)

    # ---- limits ------------------------------------------------------------------

    def _limits_reached(self, node: Node, deployment: Deployment) -> bool:
        settings = self.settings
        with Session(self.engine) as session:
            flying = (
                select(func.count())
                .select_from(Deployment)
                .join(Node, col(Node.id) == col(Deployment.node_id))
                .where(
                    col(Deployment.status).in_(deployments.LIVE),
                    col(Deployment.step).in_(("powering", "install")),
                )
            )
            if session.exec(flying).one() >= settings.max_deploying:
                return True
            if node.rack is not None:
                in_rack = flying.where(col(Node.rack) == node.rack)
                if session.exec(in_rack).one() >= settings.max_deploying_per_rack:
                    return True
            if deployment.batch_id is not None and deployment.batch_limit is not None:
                in_batch = flying.where(col(Deployment.batch_id) == deployment.batch_id)
                if session.exec(in_batch).one() >= deployment.batch_limit:
                    return True
        return False

    # ---- recording ---------------------------------------------------------------

    def _current(self, node_id: uuid.UUID) -> Deployment | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(
                select(Deployment)
                .where(Deployment.node_id == node_id)
                .order_by(col(Deployment.created_at).desc())
            ).first()

    def _goto(
        self,
        node: Node,
        deployment: Deployment,
        step: str,
        wake_at: datetime | None,
        message: str,
    ) -> None:
        with Session(self.engine) as session:
            self._set_step(session, deployment.id, step)
            session.execute(update(Node).where(col(Node.id) == node.id).values(wake_at=wake_at))
            session.commit()
        log.info("node %s: %s deployment at step %s", node.name, deployment.kind, step)

    @staticmethod
    def _set_step(session: Session, deployment_id: uuid.UUID, step: str) -> None:
        session.execute(
            update(Deployment).where(col(Deployment.id) == deployment_id).values(step=step)
        )

    def _sleep(self, node_id: uuid.UUID, until: datetime) -> None:
        with Session(self.engine) as session:
            session.execute(update(Node).where(col(Node.id) == node_id).values(wake_at=until))
            session.commit()

    async def _fail(self, node: Node, step: str, why: str) -> None:
        await run_in_threadpool(self._fail_now, node, step, why)

    def _fail_now(self, node: Node, step: str, why: str) -> None:
        with Session(self.engine) as session:
            deployments.end_live(session, node.id, "failed", why)
            current = session.get(Node, node.id)
            if current is not None:
                handoff.notify(session, self.vault, current, "node.failed", None)
            session.commit()
        self._finish(node.id, Outcome.FAIL, {"wake_at": None}, f"{step}: {why}")


class _StepFailed(Exception):
    """A step could not be done; the node fails with this message."""


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they are stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
