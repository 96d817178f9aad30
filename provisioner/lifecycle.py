"""The node lifecycle as a table: which action may follow which state, and where it leads.

Pure: no I/O, no database. The API asks it whether an operator's action is allowed; the
reconciler asks it where a finished (or failed) step leads. Everything else about a node
(power, maintenance reason, errors) is recorded elsewhere.

    discovered --enroll--> enrolled --inspect--> inspecting --inspected--> ready
    ready --provision--> provisioning --deployed--> provisioned --handed-off--> active
    active|provisioned --reimage--> provisioning
    active|provisioned|ready|failed --release--> wiping --wiped--> ready
    active|provisioned|ready|failed --wipe-skipped--> ready   (a release without a wipe)
    inspecting|provisioning|provisioned|wiping --fail--> failed
    inspecting|provisioning|wiping --abort--> failed
    failed --retry--> the state it failed in
    failed --abort--> the stable state before the failed step

Maintenance is a flag beside the state: while it is on, only ``maintenance-off``, power
actions and ``abort`` are accepted, so nobody starts work the reconciler will not do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    DISCOVERED = "discovered"
    ENROLLED = "enrolled"
    INSPECTING = "inspecting"
    READY = "ready"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    ACTIVE = "active"
    WIPING = "wiping"
    FAILED = "failed"


class Action(StrEnum):
    """What an operator may ask for through the API."""

    INSPECT = "inspect"
    PROVISION = "provision"
    REIMAGE = "reimage"
    RELEASE = "release"
    ABORT = "abort"
    RETRY = "retry"
    POWER_ON = "power-on"
    POWER_OFF = "power-off"
    POWER_CYCLE = "power-cycle"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"


class Outcome(StrEnum):
    """What the service itself reports when a step ends, and a release that skips the
    wipe step (which only an operator's explicit ``skip_wipe`` asks for)."""

    ENROLL = "enroll"
    INSPECTED = "inspected"
    DEPLOYED = "deployed"
    HANDED_OFF = "handed-off"
    WIPED = "wiped"
    WIPE_SKIPPED = "wipe-skipped"
    FAIL = "fail"


WORKING_STATES = frozenset({State.INSPECTING, State.PROVISIONING, State.PROVISIONED, State.WIPING})
# States whose work is carried out by a deployment (provisioner/steps.py).
DEPLOYMENT_STATES = frozenset(
    {State.INSPECTING, State.PROVISIONING, State.PROVISIONED, State.WIPING}
)
# States in which a machine that network-boots is given its deployment's boot script.
NETBOOT_STATES = frozenset({State.INSPECTING, State.PROVISIONING, State.WIPING})
# States in which a node runs (or is being given) an operating system in its role.
INSTALLED_STATES = frozenset({State.PROVISIONING, State.PROVISIONED, State.ACTIVE})

# Where a failed step falls back to when the operator gives up on it (abort from failed).
FALLBACK = {
    State.INSPECTING: State.ENROLLED,
    State.PROVISIONING: State.READY,
    State.PROVISIONED: State.READY,
    State.WIPING: State.ENROLLED,
}

TRANSITIONS: dict[tuple[State, Action | Outcome], State] = {
    (State.DISCOVERED, Outcome.ENROLL): State.ENROLLED,
    (State.ENROLLED, Action.INSPECT): State.INSPECTING,
    (State.INSPECTING, Outcome.INSPECTED): State.READY,
    (State.INSPECTING, Action.ABORT): State.FAILED,
    (State.READY, Action.INSPECT): State.INSPECTING,
    (State.READY, Action.PROVISION): State.PROVISIONING,
    (State.READY, Action.RELEASE): State.WIPING,
    (State.PROVISIONING, Outcome.DEPLOYED): State.PROVISIONED,
    (State.PROVISIONING, Action.ABORT): State.FAILED,
    (State.PROVISIONED, Outcome.HANDED_OFF): State.ACTIVE,
    (State.PROVISIONED, Action.REIMAGE): State.PROVISIONING,
    (State.PROVISIONED, Action.RELEASE): State.WIPING,
    (State.ACTIVE, Action.REIMAGE): State.PROVISIONING,
    (State.ACTIVE, Action.RELEASE): State.WIPING,
    (State.WIPING, Outcome.WIPED): State.READY,
    (State.WIPING, Action.ABORT): State.FAILED,
    (State.FAILED, Action.RELEASE): State.WIPING,
    **{
        (s, Outcome.WIPE_SKIPPED): State.READY
        for s in (State.ACTIVE, State.PROVISIONED, State.READY, State.FAILED)
    },
    **{(s, Outcome.FAIL): State.FAILED for s in WORKING_STATES},
}

POWER_ACTIONS = frozenset({Action.POWER_ON, Action.POWER_OFF, Action.POWER_CYCLE})
# Power is refused while a step drives the BMC itself, and on nodes without a BMC.
POWER_STATES = frozenset(
    {State.ENROLLED, State.READY, State.PROVISIONED, State.ACTIVE, State.FAILED}
)
ALLOWED_IN_MAINTENANCE = POWER_ACTIONS | {Action.ABORT, Action.MAINTENANCE_OFF}


class IllegalAction(Exception):
    """The action is not allowed now; ``allowed`` says what is."""

    def __init__(self, state: State, action: Action | Outcome, allowed: list[str], why: str):
        self.state = state
        self.action = action
        self.allowed = allowed
        super().__init__(why)


@dataclass(frozen=True)
class Transition:
    """The result of an allowed action: the next state (maybe the same one)."""

    from_state: State
    to_state: State
    action: Action | Outcome


def _target(
    state: State, action: Action | Outcome, maintenance: bool, failed_from: State | None
) -> State | None:
    if maintenance and action not in ALLOWED_IN_MAINTENANCE and isinstance(action, Action):
        return None
    if action is Action.MAINTENANCE_ON:
        return None if maintenance else state
    if action is Action.MAINTENANCE_OFF:
        return state if maintenance else None
    if action in POWER_ACTIONS:
        return state if state in POWER_STATES else None
    if state is State.FAILED and action in (Action.RETRY, Action.ABORT):
        if failed_from not in FALLBACK:
            return None
        return failed_from if action is Action.RETRY else FALLBACK[failed_from]
    return TRANSITIONS.get((state, action))


def installed(state: State, failed_from: State | None) -> bool:
    """Whether a node in ``state`` runs an operating system installed in its role: it is
    being installed, is installed, or failed on the way without losing it. A released
    node (wiping, or ready again) and one never installed do not."""
    return state in INSTALLED_STATES or (state is State.FAILED and failed_from in INSTALLED_STATES)


def allowed_actions(
    state: State, *, maintenance: bool = False, failed_from: State | None = None
) -> list[str]:
    """The operator actions accepted in this state, in a stable order."""
    return [a.value for a in Action if _target(state, a, maintenance, failed_from) is not None]


def decide(
    state: State,
    action: Action | Outcome,
    *,
    maintenance: bool = False,
    failed_from: State | None = None,
) -> Transition:
    """Return the transition for ``action`` in ``state``, or raise :class:`IllegalAction`."""
    target = _target(state, action, maintenance, failed_from)
    if target is None:
        allowed = allowed_actions(state, maintenance=maintenance, failed_from=failed_from)
        why = f"cannot {action.value} a node that is {state.value}"
        if maintenance and isinstance(action, Action) and action not in ALLOWED_IN_MAINTENANCE:
            why += " and in maintenance"
        why += f"; allowed now: {', '.join(allowed) or 'nothing'}"
        raise IllegalAction(state, action, allowed, why)
    return Transition(state, target, action)
