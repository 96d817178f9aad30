"""Deployments as data: their kinds, statuses and steps, and which step follows which.

Pure, like :mod:`provisioner.lifecycle`: no I/O, no database. A deployment is one
attempt to install, wipe or inspect a node; the reconciler carries it out one step per
tick (:mod:`provisioner.step_runner`) and asks :func:`next_step` where each step leads.
Which steps a deployment has depends on its kind and on who does the machine's side
(its :class:`Method`): the image's own installer, or the deploy agent.

    provision, reimage by an installer (kickstart, preseed, autoinstall):
      puppet-clean  revoke and delete the node's old Puppet certificate, when it has one
      network       next boot from the network (one-time, so a reboot cannot loop)
      power         wait for room under the limits and the stagger, then take a slot
      powering      power on, or cycle if it is on                   (slot taken)
      install       wait for the installer's callback, up to the deployment's deadline
      disk          boot from disk from now on
      reboot        power cycle into the installed system            -> provisioned
      handoff       wait until the role's hand-off has completed     -> active
    provision, reimage by the agent (an image written to disk):
      puppet-clean, network, power, powering, then
      agent         wait for the agent to write and verify the image
      disk, reboot, then
      first-boot    wait for the deployed system's first-boot callback -> provisioned
      handoff                                                        -> active
    wipe (release), by a wipe image or the agent:
      puppet-clean, network, power, powering, install (the wipe image calls back) or
      agent (the agent wipes and reports its evidence), then
      off           power off                                        -> ready
    inspect:
      bmc-read      read the BMC's inventory and power state          (-> ready, alone)
      network, power, powering, agent (the agent posts its in-band inventory), off
                                                                     -> ready (agent)

A step ends in one of three outcomes: ``done`` (go on), ``waiting`` (look again later,
same step) or ``failed`` (the deployment ends and the node fails). Some steps, when
done, are also a milestone of the node's lifecycle (``reboot`` -> deployed).
A new deploy path is a new (kind, method) with its list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from provisioner.lifecycle import Outcome, State


class DeploymentKind(StrEnum):
    PROVISION = "provision"
    REIMAGE = "reimage"
    WIPE = "wipe"
    INSPECT = "inspect"


class Method(StrEnum):
    """Who does the machine's side of a deployment: an inspection only reads the BMC
    when no agent is built."""

    INSTALLER = "installer"
    AGENT = "agent"
    BMC = "bmc"


class DeploymentStatus(StrEnum):
    """Where the machine's own side of a deployment is (its installer's callbacks)."""

    PENDING = "pending"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"


class Step(StrEnum):
    BMC_READ = "bmc-read"
    PUPPET_CLEAN = "puppet-clean"
    NETWORK = "network"
    POWER = "power"
    POWERING = "powering"
    INSTALL = "install"
    AGENT = "agent"
    DISK = "disk"
    REBOOT = "reboot"
    FIRST_BOOT = "first-boot"
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

_BOOT = (Step.NETWORK, Step.POWER, Step.POWERING)
_BY_INSTALLER = (Step.PUPPET_CLEAN, *_BOOT, Step.INSTALL, Step.DISK, Step.REBOOT, Step.HANDOFF)
_BY_AGENT = (
    Step.PUPPET_CLEAN,
    *_BOOT,
    Step.AGENT,
    Step.DISK,
    Step.REBOOT,
    Step.FIRST_BOOT,
    Step.HANDOFF,
)

STEPS: dict[tuple[DeploymentKind, Method], tuple[Step, ...]] = {
    (DeploymentKind.PROVISION, Method.INSTALLER): _BY_INSTALLER,
    (DeploymentKind.REIMAGE, Method.INSTALLER): _BY_INSTALLER,
    (DeploymentKind.PROVISION, Method.AGENT): _BY_AGENT,
    (DeploymentKind.REIMAGE, Method.AGENT): _BY_AGENT,
    (DeploymentKind.WIPE, Method.INSTALLER): (Step.PUPPET_CLEAN, *_BOOT, Step.INSTALL, Step.OFF),
    (DeploymentKind.WIPE, Method.AGENT): (Step.PUPPET_CLEAN, *_BOOT, Step.AGENT, Step.OFF),
    (DeploymentKind.INSPECT, Method.BMC): (Step.BMC_READ,),
    (DeploymentKind.INSPECT, Method.AGENT): (Step.BMC_READ, *_BOOT, Step.AGENT, Step.OFF),
}

# Steps whose completion moves the node along its lifecycle. An agent's image is
# deployed once the system it holds has booted and called back; an installer's once
# the machine reboots into what the installer wrote (its callback came before).
MILESTONES: dict[tuple[DeploymentKind, Method, Step], Outcome] = {
    **{
        (kind, Method.INSTALLER, step): outcome
        for kind in INSTALL_KINDS
        for step, outcome in ((Step.REBOOT, Outcome.DEPLOYED), (Step.HANDOFF, Outcome.HANDED_OFF))
    },
    **{
        (kind, Method.AGENT, step): outcome
        for kind in INSTALL_KINDS
        for step, outcome in (
            (Step.FIRST_BOOT, Outcome.DEPLOYED),
            (Step.HANDOFF, Outcome.HANDED_OFF),
        )
    },
    (DeploymentKind.WIPE, Method.INSTALLER, Step.OFF): Outcome.WIPED,
    (DeploymentKind.WIPE, Method.AGENT, Step.OFF): Outcome.WIPED,
    (DeploymentKind.INSPECT, Method.BMC, Step.BMC_READ): Outcome.INSPECTED,
    (DeploymentKind.INSPECT, Method.AGENT, Step.OFF): Outcome.INSPECTED,
}

# The steps before the machine boots what its deployment gives it.
BEFORE_BOOT = frozenset({Step.PUPPET_CLEAN, Step.NETWORK, Step.POWER, Step.POWERING})

# The steps during which a machine is booting its installer or agent: they count against
# the limits on deployments in flight (overall, per rack, per bulk request).
IN_FLIGHT = frozenset({Step.POWERING, Step.INSTALL, Step.AGENT})

# Steps that follow the one before in the same reconciler tick, because that one only
# prepared them: the Puppet clean-up is usually nothing to do, and taking a slot under
# the limits is recorded before the power-on it is for.
SAME_TICK = frozenset({(Step.PUPPET_CLEAN, Step.NETWORK), (Step.POWER, Step.POWERING)})

# The kind a lifecycle state's work starts with when it is entered without a kind of
# its own (a retry from failed).
KIND_FOR_STATE: dict[State, DeploymentKind] = {
    State.INSPECTING: DeploymentKind.INSPECT,
    State.PROVISIONING: DeploymentKind.PROVISION,
    State.WIPING: DeploymentKind.WIPE,
}


@dataclass(frozen=True)
class Next:
    """Where a step leads: the deployment's next step (None: it has ended) and what the
    node's lifecycle is told (None: nothing)."""

    step: Step | None
    lifecycle: Outcome | None = None


def first_step(kind: DeploymentKind, method: Method) -> Step:
    return STEPS[kind, method][0]


def next_step(kind: DeploymentKind, method: Method, step: Step, outcome: StepOutcome) -> Next:
    """Where ``step`` of a ``kind`` deployment done by ``method`` leads after ``outcome``.

    Raises ``ValueError`` for a step (or a kind and method) the table does not have: a
    deployment row naming one was written by something else, and guessing would be worse.
    """
    order = STEPS.get((kind, method), ())
    if step not in order:
        raise ValueError(f"a {kind.value} deployment by {method.value} has no step {step.value!r}")
    if outcome is StepOutcome.WAITING:
        return Next(step)
    if outcome is StepOutcome.FAILED:
        return Next(None, Outcome.FAIL)
    following = order.index(step) + 1
    return Next(
        order[following] if following < len(order) else None,
        MILESTONES.get((kind, method, step)),
    )
