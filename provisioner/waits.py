"""The deployment steps that wait on the machine's side: what a step's run found, and
how the installer's, the agent's and the deployed system's waits end. Pure functions of
a deployment row and the settings, used by :mod:`provisioner.step_runner`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from provisioner.boot import scripts
from provisioner.models import Deployment, utcnow
from provisioner.settings import Settings
from provisioner.steps import LIVE, DeploymentStatus, StepOutcome
from provisioner.timeline import EventKind

# How a deployment's message starts when the agent reported that its job failed, or the
# service found it cannot give the agent its job (see provisioner/agent/jobs.py):
# reported as it is, not as an installer's word.
AGENT_FAILED = "the agent reported"
AGENT_CANNOT = "the agent's job cannot be done"


@dataclass(frozen=True)
class Result:
    """What running a step found: its outcome, when to look again (None: at once),
    node columns to record, an event for the timeline and inventory facts to keep
    (source, facts)."""

    outcome: StepOutcome
    message: str = ""
    wake_at: datetime | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    event: tuple[EventKind, str] | None = None
    facts: tuple[str, dict[str, Any]] | None = None


class StepFailed(Exception):
    """A step could not be done; the deployment fails with this sentence."""


def failure(message: str) -> str:
    """Why a failed deployment failed, in the words of whoever failed it."""
    if message.startswith((scripts.BOOT_FAILED, AGENT_FAILED, AGENT_CANNOT)):
        return message
    return f"the installer reported failure: {message}"


def install(deployment: Deployment, settings: Settings) -> Result:
    """The installer (or wipe image) runs until it calls back done or failed."""
    return _callback(
        deployment,
        lambda last: (
            f"no installer callback within {settings.deploy_timeout:.0f} s (installer {last})"
        ),
    )


def first_boot(deployment: Deployment, settings: Settings) -> Result:
    """The written image boots and calls back from its config drive's callback URL."""
    return _callback(
        deployment,
        lambda last: (
            f"the deployed system did not call back within {settings.deploy_timeout:.0f} s "
            "of the deployment's start: check its console for the first boot"
        ),
    )


def agent(deployment: Deployment, settings: Settings) -> Result:
    """The agent runs its job (inventory, image, wipe) and heartbeats meanwhile. It
    fails when the agent never shows up within the deadline, or stops heartbeating."""
    status = DeploymentStatus(deployment.status)
    if deployment.agent_done_at is not None:
        return Result(StepOutcome.DONE)
    if status not in LIVE:
        return Result(StepOutcome.FAILED, f"the deployment ended ({status.value})")
    now = utcnow()
    deadline = aware(deployment.expires_at)
    if deployment.agent_seen_at is None:
        if now >= deadline:
            return Result(
                StepOutcome.FAILED,
                f"the deploy agent never called in within {settings.deploy_timeout:.0f} s: "
                "check the node's console and its boot hops (DHCP, TFTP, kernel, initrd)",
            )
        return Result(StepOutcome.WAITING, wake_at=min(deadline, now + _poll(settings)))
    lost_at = aware(deployment.agent_seen_at) + timedelta(seconds=settings.agent_heartbeat_timeout)
    if now >= lost_at or now >= deadline:
        silent = (now - aware(deployment.agent_seen_at)).total_seconds()
        return Result(
            StepOutcome.FAILED,
            f"the deploy agent stopped heartbeating: last heard {silent:.0f} s ago "
            f"(PROVISIONER_AGENT_HEARTBEAT_TIMEOUT is {settings.agent_heartbeat_timeout:.0f} s)"
            if now >= lost_at
            else f"the deploy agent did not finish within {settings.deploy_timeout:.0f} s",
        )
    return Result(StepOutcome.WAITING, wake_at=min(lost_at, deadline, now + _poll(settings)))


def _poll(settings: Settings) -> timedelta:
    # Results wake the node at once; this only bounds how late a silence is noticed.
    return timedelta(seconds=max(1.0, settings.agent_heartbeat_timeout / 4))


def _callback(deployment: Deployment, late: Callable[[str], str]) -> Result:
    status = DeploymentStatus(deployment.status)
    deadline = aware(deployment.expires_at)
    if status is DeploymentStatus.DONE:
        return Result(StepOutcome.DONE)
    if status not in LIVE:
        return Result(StepOutcome.FAILED, f"the deployment ended ({status.value})")
    if utcnow() >= deadline:
        return Result(
            StepOutcome.FAILED,
            late("started" if status is DeploymentStatus.STARTED else "never started"),
        )
    return Result(StepOutcome.WAITING, wake_at=deadline)


def aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they are stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
