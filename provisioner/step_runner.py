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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import deployments, handoff, image_cache, inspection, nodes, power, timeline, waits
from provisioner.bmc.base import BmcError, BootDevice, BootSetting, Target
from provisioner.bmc.credentials import deadline_for, target_for
from provisioner.bmc.pool import BmcPool
from provisioner.db import one_at_a_time, replica_count
from provisioner.handoff.puppet_clean import PuppetClean
from provisioner.lifecycle import Action, IllegalAction, Outcome, State
from provisioner.models import Bmc, Deployment, InventoryFact, Node, OsImage, Role, utcnow
from provisioner.profiles import ProfileSet
from provisioner.role_rules import RoleRules
from provisioner.schemas import ActionRequest
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import (
    BEFORE_BOOT,
    IN_FLIGHT,
    INSTALL_KINDS,
    LIVE,
    SAME_TICK,
    DeploymentKind,
    DeploymentStatus,
    Method,
    Next,
    Step,
    StepOutcome,
    next_step,
)
from provisioner.timeline import Actor, EventKind
from provisioner.waits import Result, StepFailed, aware

log = logging.getLogger(__name__)

# How often a node waiting for its hand-off, or for room under the limits, is looked at.
POLL = timedelta(seconds=1)
# Held while a node checks the deploy limits and takes a slot.
SLOTS_LOCK = "provisioner:deploy-slots"


@dataclass(frozen=True)
class Means:
    """What a reconciler replica works with, and the name its leases carry."""

    engine: Engine
    vault: Vault
    pool: BmcPool
    settings: Settings
    profiles: Callable[[], ProfileSet]
    owner: str
    role_rules: RoleRules


class StepRunner:
    def __init__(self, means: Means) -> None:
        self.engine = means.engine
        self.vault = means.vault
        self.pool = means.pool
        self.settings = means.settings
        self.profiles = means.profiles
        self.owner = means.owner
        self.role_rules = means.role_rules
        self.puppet_clean = PuppetClean(means.engine, means.settings)
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
                # not interleave, within a replica or between the replicas, or two
                # nodes could take the last slot.
                async with self._slots, one_at_a_time(self.engine, SLOTS_LOCK):
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
                settings=self.settings,
            )

    # ---- the steps -----------------------------------------------------------------

    async def _run(
        self, step: Step, node: Node, bmc: Bmc | None, deployment: Deployment, *, resumed: bool
    ) -> Result:
        done = Result(StepOutcome.DONE)
        kind, method = DeploymentKind(deployment.kind), Method(deployment.method)
        if DeploymentStatus(deployment.status) is DeploymentStatus.FAILED:
            # Whatever the step: the machine's side cannot go on (the installer or the
            # agent said so, or the service could not render its boot chain).
            return Result(StepOutcome.FAILED, waits.failure(deployment.message))
        if step in BEFORE_BOOT and (why := self._unbootable(kind, method)):
            return Result(StepOutcome.FAILED, why)
        try:
            if step is Step.BMC_READ:
                return await self._read_bmc(node, bmc, method)
            if step is Step.PUPPET_CLEAN:
                return await self.puppet_clean.step(node, deployment)
            if step is Step.NETWORK:
                if method is Method.AGENT and kind in INSTALL_KINDS:
                    # A broken image source fails the deployment before the machine
                    # boots, and the agent's download is then served from the cache.
                    await run_in_threadpool(self._prepare_image, deployment)
                await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                return done
            if step is Step.POWER:
                return await run_in_threadpool(self._take_slot, node, deployment)
            if step is Step.POWERING:
                if resumed:
                    # The replica that took the slot ended before it recorded the
                    # power-on. If the machine has called back since, it booted: a
                    # power-on now would cut its installation short.
                    if DeploymentStatus(deployment.status) is not DeploymentStatus.PENDING:
                        return done
                    # Else it may be off, or may have used up its one-time network
                    # boot. Start the boot over; the slot is still the node's.
                    await self._boot_device(node, bmc, BootDevice.NETWORK, persistent=False)
                return await self._power_on(bmc, deployment)
            if step is Step.INSTALL:
                return waits.install(deployment, self.settings)
            if step is Step.AGENT:
                return waits.agent(deployment, self.settings)
            if step is Step.FIRST_BOOT:
                return waits.first_boot(deployment, self.settings)
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
            off = {"power_state": await self._power(bmc, "off"), "power_checked_at": utcnow()}
            if kind is DeploymentKind.INSPECT:
                return await run_in_threadpool(self._inspected, node, off)
            return Result(StepOutcome.DONE, "disks wiped", changes=off)
        except StepFailed as failure:
            return Result(StepOutcome.FAILED, str(failure))

    def _unbootable(self, kind: DeploymentKind, method: Method) -> str | None:
        """Why the machine cannot boot what this deployment needs (the wipe image or the
        agent is gone since it started, or this replica lacks it), or None. Checked
        before it boots: it would boot from disk and its step wait in vain."""
        wipe_image_gone = nodes.wiper(self.settings) is not Method.INSTALLER
        if kind is DeploymentKind.WIPE and method is Method.INSTALLER and wipe_image_gone:
            return nodes.actions.NO_WIPE_IMAGE
        if method is Method.AGENT and not nodes.actions.agent_built(self.settings):
            return (
                f"the deploy agent is not built on this replica ({self.owner}): run "
                "`provisioner agent build` into its agent directory (PROVISIONER_AGENT_DIR, "
                "one all replicas share), then retry the node"
            )
        return None

    async def _read_bmc(self, node: Node, bmc: Bmc | None, method: Method) -> Result:
        try:
            found = await inspection.read_bmc(self.pool, self._bmc_target(bmc))
        except BmcError as err:
            raise StepFailed(f"inspection failed: {err}") from err
        changes: dict[str, object] = {
            "power_state": found.power_state,
            "power_checked_at": utcnow(),
        }
        facts = (inspection.OUT_OF_BAND, found.facts)
        if method is Method.AGENT:
            event = (EventKind.UPDATE, "BMC read; booting the deploy agent to look inside")
            return Result(StepOutcome.DONE, changes=changes, event=event, facts=facts)
        concluded, summary = await run_in_threadpool(self._conclude, node, found.facts)
        return Result(StepOutcome.DONE, summary, changes=changes | concluded, facts=facts)

    def _inspected(self, node: Node, off: dict[str, Any]) -> Result:
        changes, summary = self._conclude(node, None)
        return Result(StepOutcome.DONE, summary, changes=off | changes)

    def _conclude(self, node: Node, facts: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        """What the inspection concludes from ``facts``, or from the facts kept."""
        with Session(self.engine) as session:
            current = session.get(Node, node.id) or node
            return inspection.conclude(
                current,
                facts if facts is not None else inspection.kept(session, node.id),
                self.profiles(),
                self.role_rules,
                lambda name: session.get(Role, name) is not None,
            )

    def _prepare_image(self, deployment: Deployment) -> None:
        with Session(self.engine) as session:
            image = session.get(OsImage, deployment.image) if deployment.image else None
        if image is None:
            raise StepFailed(f"image {deployment.image!r} no longer exists")
        try:
            image_cache.prepare(image, self.settings)
        except image_cache.ImageCacheError as err:
            raise StepFailed(f"image {image.name} cannot be deployed: {err}") from err

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

    def _handoff(self, node: Node, deployment: Deployment) -> Result:
        with Session(self.engine) as session:
            current = session.get(Node, node.id)
            if current is not None and handoff.completed(session, current, deployment):
                return Result(StepOutcome.DONE, "hand-off completed")
        finished = aware(deployment.finished_at or deployment.created_at)
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
        """Hold a power-on back to keep to the service-wide rate: each of the replicas
        sharing the database powers machines on at its share of it."""
        share = await run_in_threadpool(replica_count, self.engine)
        now = time.monotonic()
        at = max(now, self._next_power_on)
        self._next_power_on = at + share / self.settings.power_on_rate
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
        following = next_step(kind, Method(deployment.method), step, result.outcome)
        for _ in range(5):
            with Session(self.engine, expire_on_commit=False) as session:
                node = session.get(Node, node_id)
                if node is None:
                    return None
                if node.lease_owner != self.owner:
                    # This replica stalled past its lease and another took the node over.
                    log.warning("node %s: step %s not recorded: lease lost", node.name, step)
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
        # Holds the node's row (and so its lease) until the commit, or finds it lost.
        held = session.execute(
            update(Node)
            .where(col(Node.id) == node.id, col(Node.lease_owner) == self.owner)
            .values(lease_owner=self.owner)
        )
        if held.rowcount != 1:  # type: ignore[attr-defined]
            raise timeline.Stale(f"node {node.name}: the lease moved")
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
        if result.facts is not None:
            source, found = result.facts
            session.add(InventoryFact(node_id=node.id, source=source, facts=found))
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
                .values(wake_at=aware(deployment.expires_at))
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


def _set_step(session: Session, deployment_id: uuid.UUID, step: Step) -> None:
    session.execute(
        update(Deployment)
        .where(col(Deployment.id) == deployment_id)
        .values(step=step.value, step_started_at=utcnow(), step_attempts=0)
    )
