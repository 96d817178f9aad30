"""The first step of a reinstall or release: the node's old Puppet certificate is
revoked and deleted on the CA, so that the new installation's certificate request is
not refused for a name the CA already has a certificate for."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner.handoff.puppet_ca import CaError, PuppetCa, certname_for, manual_clean_command
from provisioner.models import Deployment, Node, Role, utcnow
from provisioner.schemas import Handoff
from provisioner.settings import Settings
from provisioner.steps import DeploymentKind, StepOutcome
from provisioner.timeline import EventKind
from provisioner.waits import Result, aware

# The longest pause between two tries of a clean-up the CA refused for now.
MAX_BACKOFF = timedelta(seconds=60)


class PuppetClean:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.ca = PuppetCa.from_settings(settings)

    async def step(self, node: Node, deployment: Deployment) -> Result:
        why = await run_in_threadpool(self._certificate_left, node, deployment)
        if why is None:
            return Result(StepOutcome.DONE)
        certname = certname_for(node.name, self.settings)
        if self.ca is None:
            advice = (
                f"{why}; no Puppet CA is configured (PROVISIONER_PUPPET_CA_URL), so run "
                f"`{manual_clean_command(certname)}` on the CA before the new installation "
                "asks for a certificate"
            )
            return Result(StepOutcome.DONE, event=(EventKind.PUPPET_CA, advice))
        try:
            cleaned = await self.ca.clean(certname)
        except CaError as err:
            waited = utcnow() - aware(deployment.step_started_at or deployment.created_at)
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
