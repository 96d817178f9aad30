"""Carrying out a deployment's steps: the I/O behind the table in :mod:`provisioner.steps`.

The reconciler hands a leased node to :meth:`StepRunner.advance`, which runs the current
step of the node's newest deployment and records where it leads, all in one transaction:
the deployment's step, when the node should be looked at again (``Node.wake_at``) and,
for a milestone, the node's lifecycle transition through :mod:`provisioner.timeline`. A
restart resumes from the last recorded step; running a step twice is harmless (setting a
boot device again, powering on a machine that is on).

While the installer runs, the node sleeps until its deadline; the installer's ``done`` or
``failed`` callback wakes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import deployments, handoff, nodes, power, timeline
from provisioner.bmc.base import BmcError, BootDevice, BootSetting, Target
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.boot import scripts
from provisioner.handoff.puppet_ca import CaError, PuppetCa, certname_for, manual_clean_command
from provisioner.lifecycle import Action, IllegalAction, Outcome, State
from provisioner.models import Bmc, Deployment, Node, Role, utcnow
from provisioner.profiles import ProfileSet
from provisioner.schemas import ActionRequest, Handoff
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import (
    BEFORE_BOOT,
    IN_FLIGHT,
    LIVE,
    SAME_TICK,
    DeploymentKind,
    DeploymentStatus,
    Next,
    Step,
    StepOutcome,
    next_step,
)
from provisioner.timeline import Actor, EventKind

log = logging.getLogger(__name__)

# How often a node waiting for its hand-off, or for room under the limits, is looked at.
POLL = timedelta(seconds=1)
# The longest pause between two tries of a step that waits on another service.
MAX_BACKOFF = timedelta(seconds=60)


@dataclass(frozen=True)
class Result:
    """What running a step found: its outcome, when to look again (None: at once),
    node columns to record and an event for the timeline."""

    outcome: StepOutcome
    message: str = ""
    wake_at: datetime | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    event: tuple[EventKind, str] | None = None


class StepFailed(Exception):
    """A step could not be done; the deployment fails with this sentence."""


@dataclass(frozen=True)
class Means:
    """What a reconciler replica works with, and the name its leases carry."""

    engine: Engine
    vault: Vault
    pool: BmcPool
    settings: Settings
    profiles: Callable[[], ProfileSet]
    owner: str


class StepRunner:
    def __init__(self, means: Means) -> None:
        self.engine = means.engine
        self.vault = means.vault
        self.pool = means.pool
        self.settings = means.settings
        self.profiles = means.profiles
        self.owner = means.owner
        self.puppet_ca = PuppetCa.from_settings(means.settings)
        # Power-on staggering: the next moment this replica may power a machine on.
        self._next_power_on = 0.0
        # Checking the limits and taking a slot must not interleave within a replica.
        self._slots = asyncio.Lock()

    async def advance(self, node: Node, bmc: Bmc | None) -> None:
        """Run the current step of the node's deployment and record where it leads."""
        deployment = await run_in_threadpool(self._newest, node.id)
        if deployment is None:
            failed = Result(StepOutcome.FAILED, "the node has no deployment to carry out")
            await run_in_threadpool(self._no_deployment, node, failed)
            return
        step, resumed = Step(deployment.step), True
        while True:
            if step is Step.POWER:
                # Checking the limits and taking a slot (recording step POWERING) must
                # not interleave within a replica, or two nodes could take the last slot.
                async with self._slots:
                    now_at = await self._run_and_record(step, node, bmc, deployment, resumed)
            else:
                now_at = await self._run_and_record(step, node, bmc, deployment, resumed)
            if now_at is None or (step, now_at) not in SAME_TICK:
                return
            deployment.step, step, resumed = now_at.value, now_at, False

    async def _run_and_record(
        self, step: Step, node: Node, bmc: Bmc | None, deployment: Deployment, resumed: bool
    ) -> Step | None:
        result = await self._run(step, node, bmc, deployment, resumed=resumed)
        return await run_in_threadpool(self._record, node.id, deployment, step, result)

    def auto_provision(self, node: Node) -> None:
        """The racking flow: an inspected node whose role says so is provisioned."""
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
                Actor.PROVISIONER,
                vault=self.vault,
                deploy_timeout=self.settings.deploy_timeout,
                wipe_image=nodes.has_wipe_image(self.settings),
            )

    # ---- the steps -----------------------------------------------------------------

    async def _run(
        self, step: Step, node: Node, bmc: Bmc | None, deployment: Deployment, *, resumed: bool
    ) -> Result:
        done = Result(StepOutcome.DONE)
        if DeploymentStatus(deployment.status) is DeploymentStatus.FAILED:
            # Whatever the step: the machine's side cannot go on (the installer said
            # so, or the service could not render its boot chain).
            return Result(StepOutcome.FAILED, _failure(deployment.message))
        # Released while a wipe image was set (or by a replica with one): this machine
        # would boot from disk and the wipe wait for a callback in vain.
        unbootable = not nodes.actions.has_wipe_image(self.settings)
        if unbootable and deployment.kind == DeploymentKind.WIPE and step in BEFORE_BOOT:
            return Result(StepOutcome.FAILED, nodes.actions.NO_WIPE_IMAGE)
        try:
            if step is Step.PUPPET_CLEAN:
                return await self._puppet_clean(node, deployment)
            if step is Step.NETWORK:
                await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                return done
            if step is Step.POWER:
                return await run_in_threadpool(self._take_slot, node, deployment)
            if step is Step.POWERING:
                if resumed:
                    # The replica that took the slot ended before it recorded the
                    # power-on: the machine may be off, or may have used up its one-time
                    # network boot. Start the boot over; the slot is still the node's.
                    await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                return await self._power_on(bmc, deployment)
            if step is Step.INSTALL:
                return self._install(deployment)
            if step is Step.DISK:
                await self._boot_device(node, bmc, BootDevice.DISK, persistent=True)
                return done
            if step is Step.REBOOT:
                await self._power(bmc, "cycle")
                return Result(
                    StepOutcome.DONE,
                    f"{deployment.image} installed as role {deployment.role}; handing off",
                )
            if step is Step.HANDOFF:
                return await run_in_threadpool(self._handoff, node, deployment)
            await self._power(bmc, "off")
            return Result(StepOutcome.DONE, "disks wiped")
        except StepFailed as failure:
            return Result(StepOutcome.FAILED, str(failure))

    async def _puppet_clean(self, node: Node, deployment: Deployment) -> Result:
        why = await run_in_threadpool(self._certificate_left, node, deployment)
        if why is None:
            return Result(StepOutcome.DONE)
        certname = certname_for(node.name, self.settings)
        if self.puppet_ca is None:
            advice = (
                f"{why}; no Puppet CA is configured (PROVISIONER_PUPPET_CA_URL), so run "
                f"`{manual_clean_command(certname)}` on the CA before the new installation "
                "asks for a certificate"
            )
            return Result(StepOutcome.DONE, event=(EventKind.PUPPET_CA, advice))
        try:
            cleaned = await self.puppet_ca.clean(certname)
        except CaError as err:
            waited = utcnow() - _aware(deployment.step_started_at or deployment.created_at)
            limit = timedelta(seconds=self.settings.puppet_ca_retry_limit)
            if not err.retryable or waited >= limit:
                return Result(StepOutcome.FAILED, f"the Puppet CA did not clean {certname}: {err}")
            delay = min(timedelta(seconds=2**deployment.step_attempts), MAX_BACKOFF)
            waiting = (
                f"waiting for the Puppet CA to clean {certname} (try "
                f"{deployment.step_attempts + 1}): {err}; next try in {delay.seconds} s"
            )
            return Result(
                StepOutcome.WAITING, wake_at=utcnow() + delay, event=(EventKind.PUPPET_CA, waiting)
            )
        return Result(StepOutcome.DONE, event=(EventKind.PUPPET_CA, cleaned.message))

    def _certificate_left(self, node: Node, deployment: Deployment) -> str | None:
        """Why the node may still hold a Puppet certificate from before this deployment,
        or None. The deployment before this one tells: an installation whose challenge
        signed a CSR, or whose role handed the node to Puppet."""
        with Session(self.engine) as session:
            before = session.exec(
                select(Deployment)
                .where(
                    col(Deployment.node_id) == node.id,
                    col(Deployment.created_at) < deployment.created_at,
                )
                .order_by(col(Deployment.created_at).desc())
            ).first()
            if before is None or DeploymentKind(before.kind) is DeploymentKind.WIPE:
                return None
            if before.challenge_used_at is not None:
                return f"node {node.name}'s Puppet certificate was signed by provisioner autosign"
            role = session.get(Role, before.role) if before.role else None
        if role is not None and role.handoff == Handoff.ENC:
            return f"node {node.name} was handed to Puppet as role {role.name}"
        return None

    def _take_slot(self, node: Node, deployment: Deployment) -> Result:
        if self._limits_reached(node, deployment):
            return Result(StepOutcome.WAITING, wake_at=utcnow() + POLL)
        # Should this replica die before the power-on is recorded, the node is looked
        # at again when its lease has run out.
        retry_at = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        return Result(StepOutcome.DONE, wake_at=retry_at)

    async def _power_on(self, bmc: Bmc | None, deployment: Deployment) -> Result:
        await self._stagger()
        state = await self._power(bmc, "cycle")
        return Result(
            StepOutcome.DONE,
            changes={"power_state": state, "power_checked_at": utcnow()},
            event=(
                EventKind.POWER,
                f"powered on to boot {deployment.kind} deployment {str(deployment.id)[:8]}",
            ),
        )

    def _install(self, deployment: Deployment) -> Result:
        status = DeploymentStatus(deployment.status)
        deadline = _aware(deployment.expires_at)
        if status is DeploymentStatus.DONE:
            return Result(StepOutcome.DONE)
        if status not in LIVE:
            return Result(StepOutcome.FAILED, f"the deployment ended ({status.value})")
        if utcnow() >= deadline:
            last = "started" if status is DeploymentStatus.STARTED else "never started"
            return Result(
                StepOutcome.FAILED,
                f"no installer callback within {self.settings.deploy_timeout:.0f} s "
                f"(installer {last})",
            )
        return Result(StepOutcome.WAITING, wake_at=deadline)

    def _handoff(self, node: Node, deployment: Deployment) -> Result:
        with Session(self.engine) as session:
            current = session.get(Node, node.id)
            if current is not None and handoff.completed(session, current, deployment):
                return Result(StepOutcome.DONE, "hand-off completed")
        finished = _aware(deployment.finished_at or deployment.created_at)
        if utcnow() - finished > timedelta(seconds=self.settings.handoff_timeout):
            return Result(StepOutcome.FAILED, "the role's hand-off did not complete in time")
        return Result(StepOutcome.WAITING, wake_at=utcnow() + POLL)

    # ---- BMC -------------------------------------------------------------------------

    async def _boot_device(
        self, node: Node, bmc: Bmc | None, device: BootDevice, *, persistent: bool
    ) -> None:
        target = self._bmc_target(bmc)
        profile = self.profiles().get(node.hardware_profile) if node.hardware_profile else None
        # A UEFI machine told to boot "network" in legacy mode would try BIOS PXE.
        uefi = profile is not None and profile.boot_mode == "uefi"
        setting = BootSetting(device, persistent=persistent, uefi=uefi)
        try:
            await self.pool.call(
                target, lambda d: d.set_boot_device(setting), deadline=deadline_for(target)
            )
        except BmcError as err:
            raise StepFailed(f"setting boot device {device.value} failed: {err}") from err

    async def _power(self, bmc: Bmc | None, action: str) -> str:
        try:
            return await power.carry_out(self.pool, self._bmc_target(bmc), action)
        except BmcError as err:
            raise StepFailed(f"power {action} failed: {err}") from err

    def _bmc_target(self, bmc: Bmc | None) -> Target:
        if bmc is None:
            raise StepFailed("the node has no BMC")
        return target_for(bmc, self.vault, self.settings)

    async def _stagger(self) -> None:
        now = time.monotonic()
        at = max(now, self._next_power_on)
        self._next_power_on = at + 1 / self.settings.power_on_rate
        if at > now:
            await asyncio.sleep(at - now)

    # ---- limits ----------------------------------------------------------------------

    def _limits_reached(self, node: Node, deployment: Deployment) -> bool:
        settings = self.settings
        with Session(self.engine) as session:
            flying = (
                select(func.count())
                .select_from(Deployment)
                .join(Node, col(Node.id) == col(Deployment.node_id))
                .where(col(Deployment.status).in_(LIVE), col(Deployment.step).in_(IN_FLIGHT))
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

    # ---- recording -------------------------------------------------------------------

    def _newest(self, node_id: uuid.UUID) -> Deployment | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return deployments.latest(session, node_id)

    def _record(
        self, node_id: uuid.UUID, deployment: Deployment, step: Step, result: Result
    ) -> Step | None:
        """Record ``result`` of ``step``; returns the step the deployment is at now, or
        None when nothing was recorded (the node was deleted or moved on meanwhile)."""
        kind = DeploymentKind(deployment.kind)
        following = next_step(kind, step, result.outcome)
        for _ in range(5):
            with Session(self.engine, expire_on_commit=False) as session:
                node = session.get(Node, node_id)
                if node is None:
                    return None
                try:
                    self._write(session, node, deployment, step, following, result)
                except timeline.Stale:
                    session.rollback()
                    continue
                except IllegalAction:
                    session.rollback()
                    log.info("node %s: %s no longer applies", node.name, following.lifecycle)
                    return None
                session.commit()
            log.info(
                "node %s: %s deployment step %s %s",
                node.name,
                kind.value,
                step.value,
                result.outcome.value,
            )
            return following.step
        log.error("node %s: could not record step %s: the node kept changing", node_id, step)
        return None

    def _write(
        self,
        session: Session,
        node: Node,
        deployment: Deployment,
        step: Step,
        following: Next,
        result: Result,
    ) -> None:
        if following.step is not None and following.step is not step:
            _set_step(session, deployment.id, following.step)
        elif result.outcome is StepOutcome.WAITING:
            session.execute(
                update(Deployment)
                .where(col(Deployment.id) == deployment.id)
                .values(step_attempts=col(Deployment.step_attempts) + 1)
            )
        milestone = following.lifecycle
        if milestone is Outcome.FAIL:
            deployments.end_live(session, node.id, DeploymentStatus.FAILED, result.message)
            handoff.notify(session, self.vault, node, handoff.FAILED, None)
        elif milestone is Outcome.DEPLOYED:
            handoff.begin(session, self.vault, node, deployment)
        elif milestone is Outcome.HANDED_OFF:
            handoff.notify(session, self.vault, node, handoff.ACTIVE, deployment)
        wake = {"wake_at": result.wake_at}
        if result.event is not None and (milestone is not None or not result.changes):
            kind, text = result.event
            timeline.note(session, node.id, kind, Actor.PROVISIONER, text)
        if milestone is not None:
            message = result.message
            if milestone is Outcome.FAIL:
                message = f"{step.value}: {message}"
                log.warning("node %s: %s", node.name, message)
            timeline.transition(
                session,
                node,
                milestone,
                Actor.PROVISIONER,
                message,
                changes={**result.changes, **wake},
                lease_owner=self.owner,
            )
            return
        if result.changes:
            kind, text = result.event or (EventKind.UPDATE, f"{step.value} done")
            timeline.change(session, node, result.changes, kind, Actor.PROVISIONER, text)
        if following.step is Step.INSTALL and step is not Step.INSTALL:
            # Sleep until the deadline, unless the installer has already called back
            # done or failed: its wake-up is not to be undone.
            live = (
                select(Deployment.id)
                .where(col(Deployment.id) == deployment.id, col(Deployment.status).in_(LIVE))
                .exists()
            )
            session.execute(
                update(Node)
                .where(col(Node.id) == node.id, live)
                .values(wake_at=_aware(deployment.expires_at))
            )
            return
        session.execute(update(Node).where(col(Node.id) == node.id).values(**wake))

    def _no_deployment(self, node: Node, failed: Result) -> None:
        with Session(self.engine) as session:
            current = session.get(Node, node.id)
            if current is None:
                return
            try:
                timeline.transition(
                    session,
                    current,
                    Outcome.FAIL,
                    Actor.PROVISIONER,
                    f"deploy: {failed.message}",
                    changes={"wake_at": None},
                )
            except (timeline.Stale, IllegalAction):
                return
            session.commit()


def _failure(message: str) -> str:
    """Why a failed deployment failed, in the words of whoever failed it."""
    if message.startswith(scripts.BOOT_FAILED):
        return message
    return f"the installer reported failure: {message}"


def _set_step(session: Session, deployment_id: uuid.UUID, step: Step) -> None:
    session.execute(
        update(Deployment)
        .where(col(Deployment.id) == deployment_id)
        .values(step=step.value, step_started_at=utcnow(), step_attempts=0)
    )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they are stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
