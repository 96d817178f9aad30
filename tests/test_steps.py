"""The deployment step table: every (kind, step, outcome) there is, and what it leads to."""

from __future__ import annotations

import pytest

from provisioner.lifecycle import Outcome
from provisioner.steps import (
    STEPS,
    DeploymentKind,
    Next,
    Step,
    StepOutcome,
    first_step,
    next_step,
)

S = Step
INSTALL_ORDER = [
    S.PUPPET_CLEAN,
    S.NETWORK,
    S.POWER,
    S.POWERING,
    S.INSTALL,
    S.DISK,
    S.REBOOT,
    S.HANDOFF,
]
WIPE_ORDER = [S.PUPPET_CLEAN, S.NETWORK, S.POWER, S.POWERING, S.INSTALL, S.OFF]

# What each step leads to when it is done, per kind: (next step, lifecycle outcome).
DONE: dict[DeploymentKind, dict[Step, Next]] = {
    DeploymentKind.PROVISION: {
        S.PUPPET_CLEAN: Next(S.NETWORK),
        S.NETWORK: Next(S.POWER),
        S.POWER: Next(S.POWERING),
        S.POWERING: Next(S.INSTALL),
        S.INSTALL: Next(S.DISK),
        S.DISK: Next(S.REBOOT),
        S.REBOOT: Next(S.HANDOFF, Outcome.DEPLOYED),
        S.HANDOFF: Next(None, Outcome.HANDED_OFF),
    },
    DeploymentKind.WIPE: {
        S.PUPPET_CLEAN: Next(S.NETWORK),
        S.NETWORK: Next(S.POWER),
        S.POWER: Next(S.POWERING),
        S.POWERING: Next(S.INSTALL),
        S.INSTALL: Next(S.OFF),
        S.OFF: Next(None, Outcome.WIPED),
    },
}
# A reimage is a provision of a node that had an installation: the same steps.
DONE[DeploymentKind.REIMAGE] = DONE[DeploymentKind.PROVISION]

PAIRS = [(kind, step) for kind in DeploymentKind for step in STEPS[kind]]


def test_every_kind_has_its_steps_in_order() -> None:
    assert set(STEPS) == set(DeploymentKind)
    assert list(STEPS[DeploymentKind.PROVISION]) == INSTALL_ORDER
    assert list(STEPS[DeploymentKind.REIMAGE]) == INSTALL_ORDER
    assert list(STEPS[DeploymentKind.WIPE]) == WIPE_ORDER
    assert all(first_step(kind) is Step.PUPPET_CLEAN for kind in DeploymentKind)


@pytest.mark.parametrize(("kind", "step"), PAIRS)
def test_done_moves_on(kind: DeploymentKind, step: Step) -> None:
    assert next_step(kind, step, StepOutcome.DONE) == DONE[kind][step]


@pytest.mark.parametrize(("kind", "step"), PAIRS)
def test_waiting_stays_and_tells_the_lifecycle_nothing(kind: DeploymentKind, step: Step) -> None:
    assert next_step(kind, step, StepOutcome.WAITING) == Next(step, None)


@pytest.mark.parametrize(("kind", "step"), PAIRS)
def test_failed_ends_the_deployment_and_fails_the_node(kind: DeploymentKind, step: Step) -> None:
    assert next_step(kind, step, StepOutcome.FAILED) == Next(None, Outcome.FAIL)


def test_the_table_above_covers_every_pair() -> None:
    assert {(k, s) for k in DONE for s in DONE[k]} == set(PAIRS)


@pytest.mark.parametrize("outcome", list(StepOutcome))
@pytest.mark.parametrize("step", [S.DISK, S.REBOOT, S.HANDOFF])
def test_a_wipe_has_no_install_steps(step: Step, outcome: StepOutcome) -> None:
    with pytest.raises(ValueError, match="a wipe deployment has no step"):
        next_step(DeploymentKind.WIPE, step, outcome)


@pytest.mark.parametrize("outcome", list(StepOutcome))
@pytest.mark.parametrize("kind", [DeploymentKind.PROVISION, DeploymentKind.REIMAGE])
def test_an_install_has_no_power_off_step(kind: DeploymentKind, outcome: StepOutcome) -> None:
    with pytest.raises(ValueError, match="has no step 'off'"):
        next_step(kind, S.OFF, outcome)
