"""Deployments as data: their kinds, statuses and steps, and which step follows which.

Pure, like :mod:`provisioner.lifecycle`: no I/O, no database. A deployment is one
attempt to install (or wipe) a node; the reconciler carries it out one step per tick
(:mod:`provisioner.step_runner`) and asks :func:`next_step` where each step leads.

    provision, reimage:
      puppet-clean  revoke and delete the node's old Puppet certificate, when it has one
      network       next boot from the network (one-time, so a reboot cannot loop)
      power         wait for room under the limits and the stagger, then take a slot
      powering      power on, or cycle if it is on                   (slot taken)
      install       wait for the installer's callback, up to the deployment's deadline
      disk          boot from disk from now on
      reboot        power cycle into the installed system            -> provisioned
      handoff       wait until the role's hand-off has completed     -> active
    wipe (release):
      puppet-clean, network, power, powering, install (the wipe image calls back), then
      off           power off                                        -> ready

A step ends in one of three outcomes: ``done`` (go on), ``waiting`` (look again later,
same step) or ``failed`` (the deployment ends and the node fails). Some steps, when
done, are also a milestone of the node's lifecycle (``reboot`` -> deployed).
A new deploy path (an in-band agent's image deploy, say) is a new kind with its list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from provisioner.lifecycle import Outcome, State


class DeploymentKind(StrEnum):
    PROVISION = "provision"
    REIMAGE = "reimage"
    WIPE = "wipe"


class DeploymentStatus(StrEnum):
    """Where the machine's own side of a deployment is (its installer's callbacks)."""

    PENDING = "pending"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"


class Step(StrEnum):
    PUPPET_CLEAN = "puppet-clean"
    NETWORK = "network"
    POWER = "power"
    POWERING = "powering"
    INSTALL = "install"
    DISK = "disk"
    REBOOT = "reboot"
    HANDOFF = "handoff"
    OFF = "off"


class StepOutcome(StrEnum):
    DONE = "done"
    WAITING = "waiting"
    FAILED = "failed"


# A deployment's token opens its answer file and takes callbacks only while it is live.
LIVE = (DeploymentStatus.PENDING, DeploymentStatus.STARTED)

# Kinds that leave an operating system on the disk (and so a Puppet agent behind).
INSTALL_KINDS = frozenset({DeploymentKind.PROVISION, DeploymentKind.REIMAGE})

_INSTALL = (
    Step.PUPPET_CLEAN,
    Step.NETWORK,
    Step.POWER,
    Step.POWERING,
    Step.INSTALL,
    Step.DISK,
    Step.REBOOT,
    Step.HANDOFF,
)

STEPS: dict[DeploymentKind, tuple[Step, ...]] = {
    DeploymentKind.PROVISION: _INSTALL,
    DeploymentKind.REIMAGE: _INSTALL,
    DeploymentKind.WIPE: (
        Step.PUPPET_CLEAN,
        Step.NETWORK,
        Step.POWER,
        Step.POWERING,
        Step.INSTALL,
        Step.OFF,
    ),
}

# Steps whose completion moves the node along its lifecycle.
MILESTONES: dict[tuple[DeploymentKind, Step], Outcome] = {
    (DeploymentKind.PROVISION, Step.REBOOT): Outcome.DEPLOYED,
    (DeploymentKind.PROVISION, Step.HANDOFF): Outcome.HANDED_OFF,
    (DeploymentKind.REIMAGE, Step.REBOOT): Outcome.DEPLOYED,
    (DeploymentKind.REIMAGE, Step.HANDOFF): Outcome.HANDED_OFF,
    (DeploymentKind.WIPE, Step.OFF): Outcome.WIPED,
}

# The steps before the machine boots what its deployment gives it.
BEFORE_BOOT = frozenset({Step.PUPPET_CLEAN, Step.NETWORK, Step.POWER, Step.POWERING})

# The steps during which a machine is booting its installer: they count against the
# limits on deployments in flight (overall, per rack, per bulk request).
IN_FLIGHT = frozenset({Step.POWERING, Step.INSTALL})

# Steps that follow the one before in the same reconciler tick, because that one only
# prepared them: the Puppet clean-up is usually nothing to do, and taking a slot under
# the limits is recorded before the power-on it is for.
SAME_TICK = frozenset({(Step.PUPPET_CLEAN, Step.NETWORK), (Step.POWER, Step.POWERING)})

# The kind a lifecycle state's work starts with when it is entered without a kind of
# its own (a retry from failed).
KIND_FOR_STATE: dict[State, DeploymentKind] = {
    State.PROVISIONING: DeploymentKind.PROVISION,
    State.WIPING: DeploymentKind.WIPE,
}


@dataclass(frozen=True)
class Next:
    """Where a step leads: the deployment's next step (None: it has ended) and what the
    node's lifecycle is told (None: nothing)."""

    step: Step | None
    lifecycle: Outcome | None = None


def first_step(kind: DeploymentKind) -> Step:
    return STEPS[kind][0]


def next_step(kind: DeploymentKind, step: Step, outcome: StepOutcome) -> Next:
    """Where ``step`` of a ``kind`` deployment leads after ``outcome``.

    Raises ``ValueError`` for a step that ``kind`` does not have: a deployment row
    naming one was written by something else, and guessing would be worse.
    """
    order = STEPS[kind]
    if step not in order:
        raise ValueError(f"a {kind.value} deployment has no step {step.value!r}")
    if outcome is StepOutcome.WAITING:
        return Next(step)
    if outcome is StepOutcome.FAILED:
        return Next(None, Outcome.FAIL)
    following = order.index(step) + 1
    return Next(order[following] if following < len(order) else None, MILESTONES.get((kind, step)))
