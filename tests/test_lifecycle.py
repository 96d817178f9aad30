"""Every (state, action) pair: allowed ones lead to the documented state, others are
refused with the list of what is allowed."""

from __future__ import annotations

import itertools

import pytest

from provisioner.lifecycle import (
    Action,
    IllegalAction,
    Outcome,
    State,
    allowed_actions,
    decide,
)

S, A, R = State, Action, Outcome

# The documented table (DESIGN.md and lifecycle.py's docstring), written out in full.
EXPECTED: dict[tuple[State, Action | Outcome], State] = {
    (S.DISCOVERED, R.ENROLL): S.ENROLLED,
    (S.ENROLLED, A.INSPECT): S.INSPECTING,
    (S.INSPECTING, R.INSPECTED): S.READY,
    (S.INSPECTING, A.ABORT): S.FAILED,
    (S.INSPECTING, R.FAIL): S.FAILED,
    (S.READY, A.INSPECT): S.INSPECTING,
    (S.READY, A.PROVISION): S.PROVISIONING,
    (S.READY, A.RELEASE): S.WIPING,
    (S.PROVISIONING, R.DEPLOYED): S.PROVISIONED,
    (S.PROVISIONING, A.ABORT): S.FAILED,
    (S.PROVISIONING, R.FAIL): S.FAILED,
    (S.PROVISIONED, R.HANDED_OFF): S.ACTIVE,
    (S.PROVISIONED, A.REIMAGE): S.PROVISIONING,
    (S.PROVISIONED, A.RELEASE): S.WIPING,
    (S.PROVISIONED, R.FAIL): S.FAILED,
    (S.ACTIVE, A.REIMAGE): S.PROVISIONING,
    (S.ACTIVE, A.RELEASE): S.WIPING,
    (S.WIPING, R.WIPED): S.READY,
    (S.WIPING, A.ABORT): S.FAILED,
    (S.WIPING, R.FAIL): S.FAILED,
    (S.FAILED, A.RELEASE): S.WIPING,
    # A release whose wipe the operator skipped explicitly (skip_wipe).
    (S.ACTIVE, R.WIPE_SKIPPED): S.READY,
    (S.PROVISIONED, R.WIPE_SKIPPED): S.READY,
    (S.READY, R.WIPE_SKIPPED): S.READY,
    (S.FAILED, R.WIPE_SKIPPED): S.READY,
}
POWER_OK = {S.ENROLLED, S.READY, S.PROVISIONED, S.ACTIVE, S.FAILED}
for _state, _power in itertools.product(POWER_OK, (A.POWER_ON, A.POWER_OFF, A.POWER_CYCLE)):
    EXPECTED[(_state, _power)] = _state
for _state in S:
    EXPECTED[(_state, A.MAINTENANCE_ON)] = _state

ALL_MOVES: list[Action | Outcome] = [*Action, *Outcome]


# Retry and abort from failed depend on where the node failed: covered further down.
PAIRS = [
    (state, move)
    for state, move in itertools.product(State, ALL_MOVES)
    if not (state is S.FAILED and move in (A.RETRY, A.ABORT))
]


@pytest.mark.parametrize(("state", "move"), PAIRS)
def test_every_pair_outside_failed_and_maintenance(state: State, move: Action | Outcome) -> None:
    expected = EXPECTED.get((state, move))
    if expected is None:
        with pytest.raises(IllegalAction) as err:
            decide(state, move)
        assert err.value.allowed == allowed_actions(state)
        assert f"cannot {move.value}" in str(err.value)
        assert "allowed now:" in str(err.value)
    else:
        transition = decide(state, move)
        assert (transition.from_state, transition.to_state) == (state, expected)


@pytest.mark.parametrize(
    ("failed_from", "retry_to", "abort_to"),
    [
        (S.INSPECTING, S.INSPECTING, S.ENROLLED),
        (S.PROVISIONING, S.PROVISIONING, S.READY),
        (S.PROVISIONED, S.PROVISIONED, S.READY),
        (S.WIPING, S.WIPING, S.ENROLLED),
    ],
)
def test_failed_retry_returns_to_the_failed_step_and_abort_falls_back(
    failed_from: State, retry_to: State, abort_to: State
) -> None:
    assert decide(S.FAILED, A.RETRY, failed_from=failed_from).to_state is retry_to
    assert decide(S.FAILED, A.ABORT, failed_from=failed_from).to_state is abort_to


@pytest.mark.parametrize("failed_from", [None, S.READY, S.ACTIVE])
def test_failed_without_a_failed_step_cannot_retry_or_abort(failed_from: State | None) -> None:
    for action in (A.RETRY, A.ABORT):
        with pytest.raises(IllegalAction):
            decide(S.FAILED, action, failed_from=failed_from)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(State, Action)))
def test_maintenance_allows_only_power_abort_and_maintenance_off(
    state: State, action: Action
) -> None:
    failed_from = S.PROVISIONING if state is S.FAILED else None
    without = EXPECTED.get((state, action))
    if state is S.FAILED and action in (A.RETRY, A.ABORT):
        without = decide(state, action, failed_from=failed_from).to_state
    if action is A.MAINTENANCE_OFF:
        assert decide(state, action, maintenance=True).to_state is state
        return
    if action in (A.POWER_ON, A.POWER_OFF, A.POWER_CYCLE, A.ABORT) and without is not None:
        assert decide(state, action, maintenance=True, failed_from=failed_from).to_state is without
        return
    with pytest.raises(IllegalAction) as err:
        decide(state, action, maintenance=True, failed_from=failed_from)
    assert "maintenance-off" in err.value.allowed


def test_maintenance_off_is_refused_when_not_in_maintenance() -> None:
    with pytest.raises(IllegalAction, match="allowed now: inspect"):
        decide(S.ENROLLED, A.MAINTENANCE_OFF)


def test_allowed_actions_lists_what_decide_accepts() -> None:
    for state in State:
        for maintenance in (False, True):
            for action in Action:
                try:
                    decide(state, action, maintenance=maintenance)
                    ok = True
                except IllegalAction:
                    ok = False
                assert ok == (action.value in allowed_actions(state, maintenance=maintenance))
