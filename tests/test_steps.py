"""The deployment step table: every (kind, method, step, outcome) there is, and what it
leads to."""

from __future__ import annotations

import pytest

from provisioner.lifecycle import Outcome
from provisioner.steps import (
    STEPS,
    DeploymentKind,
    Method,
    Next,
    Step,
    StepOutcome,
    first_step,
    next_step,
)

S = Step
K = DeploymentKind
M = Method
_BOOT = {S.NETWORK: Next(S.POWER), S.POWER: Next(S.POWERING)}

# What each step leads to when it is done, per (kind, method): (next step, lifecycle outcome).
BY_INSTALLER = {
    S.PUPPET_CLEAN: Next(S.NETWORK),
    **_BOOT,
    S.POWERING: Next(S.INSTALL),
    S.INSTALL: Next(S.DISK),
    S.DISK: Next(S.REBOOT),
    S.REBOOT: Next(S.HANDOFF, Outcome.DEPLOYED),
    S.HANDOFF: Next(None, Outcome.HANDED_OFF),
}
# The agent writes the image; the node is deployed once that system booted and called.
BY_AGENT = {
    S.PUPPET_CLEAN: Next(S.NETWORK),
    **_BOOT,
    S.POWERING: Next(S.AGENT),
    S.AGENT: Next(S.DISK),
    S.DISK: Next(S.REBOOT),
    S.REBOOT: Next(S.FIRST_BOOT),
    S.FIRST_BOOT: Next(S.HANDOFF, Outcome.DEPLOYED),
    S.HANDOFF: Next(None, Outcome.HANDED_OFF),
}
DONE: dict[tuple[DeploymentKind, Method], dict[Step, Next]] = {
    # A reimage is a provision of a node that had an installation: the same steps.
    (K.PROVISION, M.INSTALLER): BY_INSTALLER,
    (K.REIMAGE, M.INSTALLER): BY_INSTALLER,
    (K.PROVISION, M.AGENT): BY_AGENT,
    (K.REIMAGE, M.AGENT): BY_AGENT,
    (K.WIPE, M.INSTALLER): {
        S.PUPPET_CLEAN: Next(S.NETWORK),
        **_BOOT,
        S.POWERING: Next(S.INSTALL),
        S.INSTALL: Next(S.OFF),
        S.OFF: Next(None, Outcome.WIPED),
    },
    (K.WIPE, M.AGENT): {
        S.PUPPET_CLEAN: Next(S.NETWORK),
        **_BOOT,
        S.POWERING: Next(S.AGENT),
        S.AGENT: Next(S.OFF),
        S.OFF: Next(None, Outcome.WIPED),
    },
    (K.INSPECT, M.BMC): {S.BMC_READ: Next(None, Outcome.INSPECTED)},
    (K.INSPECT, M.AGENT): {
        S.BMC_READ: Next(S.NETWORK),
        **_BOOT,
        S.POWERING: Next(S.AGENT),
        S.AGENT: Next(S.OFF),
        S.OFF: Next(None, Outcome.INSPECTED),
    },
}

CASES = [(kind, method, step) for (kind, method), order in STEPS.items() for step in order]


def test_every_path_starts_where_it_should() -> None:
    assert set(STEPS) == set(DONE)
    for kind, method in STEPS:
        expected = S.BMC_READ if kind is K.INSPECT else S.PUPPET_CLEAN
        assert first_step(kind, method) is expected


@pytest.mark.parametrize(("kind", "method", "step"), CASES)
def test_done_moves_on(kind: DeploymentKind, method: Method, step: Step) -> None:
    assert next_step(kind, method, step, StepOutcome.DONE) == DONE[kind, method][step]


@pytest.mark.parametrize(("kind", "method", "step"), CASES)
def test_waiting_stays_and_tells_the_lifecycle_nothing(
    kind: DeploymentKind, method: Method, step: Step
) -> None:
    assert next_step(kind, method, step, StepOutcome.WAITING) == Next(step, None)


@pytest.mark.parametrize(("kind", "method", "step"), CASES)
def test_failed_ends_the_deployment_and_fails_the_node(
    kind: DeploymentKind, method: Method, step: Step
) -> None:
    assert next_step(kind, method, step, StepOutcome.FAILED) == Next(None, Outcome.FAIL)


def test_the_table_above_covers_every_step_in_order() -> None:
    for path, order in STEPS.items():
        assert list(order) == list(DONE[path]), path


@pytest.mark.parametrize("outcome", list(StepOutcome))
@pytest.mark.parametrize("step", [S.DISK, S.REBOOT, S.HANDOFF])
def test_a_wipe_has_no_install_steps(step: Step, outcome: StepOutcome) -> None:
    with pytest.raises(ValueError, match="a wipe deployment by installer has no step"):
        next_step(K.WIPE, M.INSTALLER, step, outcome)


@pytest.mark.parametrize("outcome", list(StepOutcome))
@pytest.mark.parametrize("kind", [K.PROVISION, K.REIMAGE])
def test_an_install_has_no_power_off_step(kind: DeploymentKind, outcome: StepOutcome) -> None:
    with pytest.raises(ValueError, match="has no step 'off'"):
        next_step(kind, M.AGENT, S.OFF, outcome)


def test_a_path_the_table_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="a provision deployment by bmc has no step"):
        next_step(K.PROVISION, M.BMC, S.NETWORK, StepOutcome.DONE)
