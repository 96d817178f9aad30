"""Lifecycle and power actions on one node, as an operator (or the reconciler) asks for
them: checked against the lifecycle and recorded; the reconciler does the work.

A release wipes the node's disks with the wipe image when one is configured, else with
the deploy agent when it is built; without either it is refused, unless the operator
says explicitly to skip the wipe (``skip_wipe``), which returns the node to ``ready`` at
once with its disks as they were."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from provisioner import deployments, timeline
from provisioner.agent.build import current as built_agent
from provisioner.errors import Problem
from provisioner.lifecycle import POWER_ACTIONS, Action, IllegalAction, Outcome, State, decide
from provisioner.models import Node, OsImage, Role
from provisioner.nodes.changes import POWER_RESET, saving
from provisioner.schemas import ActionRequest
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import KIND_FOR_STATE, DeploymentKind, DeploymentStatus, Method

NO_WIPE_IMAGE = (
    "Neither a wipe image nor the deploy agent is there, so the node's disks cannot be "
    "wiped: build the agent (provisioner agent build), or set PROVISIONER_WIPE_KERNEL_URL "
    "and PROVISIONER_WIPE_INITRD_URL and restart the service, or release it without a "
    'wipe, leaving its disks as they are: {"skip_wipe": true} '
    "(provisioner node release --skip-wipe)."
)


def agent_built(settings: Settings) -> bool:
    """Whether the deploy agent has been built into the agent directory."""
    return built_agent(settings.resolved_agent_dir) is not None


def wiper(settings: Settings) -> Method | None:
    """Who wipes a released node: the configured wipe image, else the deploy agent when
    it is built; None when neither is there."""
    if settings.wipe_kernel_url and settings.wipe_initrd_url:
        return Method.INSTALLER
    return Method.AGENT if agent_built(settings) else None


def check_skip_wipe(action: Action, body: ActionRequest) -> None:
    """``skip_wipe`` belongs to a release: anywhere else it is a mistake, not a no-op."""
    if body.skip_wipe and action is not Action.RELEASE:
        raise Problem(
            422,
            f"skip_wipe applies to release only, not to {action.value}.",
            errors=[{"field": "skip_wipe", "message": "applies to release only"}],
        )


def act(
    session: Session,
    node: Node,
    action: Action,
    body: ActionRequest,
    actor: str,
    *,
    vault: Vault,
    settings: Settings,
    batch: deployments.Batch | None = None,
) -> Node:
    """Validate ``action`` against the lifecycle and record it; the reconciler does the work.

    Entering provisioning or wiping starts a deployment at once, so a machine that
    network-boots from now on gets its installer even before the reconciler powers it.
    Wiping needs a wipe image or the agent (:func:`wiper`); a release with ``skip_wipe``
    goes to ``ready`` without either.
    """
    check_skip_wipe(action, body)
    state = State(node.state)
    try:
        to_state = decide(
            state, action, maintenance=node.maintenance, failed_from=_failed_from(node)
        ).to_state
    except IllegalAction as illegal:
        if state is not State.DISCOVERED:
            raise
        # The way out of discovered is not an action: say what it is.
        raise Problem(
            409,
            f"{str(illegal).capitalize()}. Enroll it first: give it a BMC with PATCH "
            f'/api/v1/nodes/{node.name} {{"bmc": {{"address", "username", "password"}}}}.',
            allowed_actions=illegal.allowed,
        ) from None
    if body.skip_wipe:
        return _release_unwiped(session, node, body, actor)
    if to_state is State.WIPING and wiper(settings) is None:
        raise Problem(409, NO_WIPE_IMAGE)
    changes: dict[str, Any] = {}
    if action in (Action.PROVISION, Action.REIMAGE):
        changes.update(_deployment_choice(session, node, body))
        by_agent = _method(session, to_state, changes["image"], settings) is Method.AGENT
        if by_agent and not agent_built(settings):
            raise Problem(
                409,
                f"Image {changes['image']} is written to disk by the deploy agent, which "
                "is not built: run `provisioner agent build` into the service's agent directory "
                "(PROVISIONER_AGENT_DIR).",
            )
    message = body.reason or f"{action.value} requested"
    if action is Action.MAINTENANCE_ON:
        changes.update(maintenance=True, maintenance_reason=body.reason)
    elif action is Action.MAINTENANCE_OFF:
        changes.update(maintenance=False, maintenance_reason=None)
    elif action in POWER_ACTIONS:
        changes.update(POWER_RESET, target_power=action.value.removeprefix("power-"))
    elif action in (Action.PROVISION, Action.REIMAGE):
        message = f"{action.value} as role {changes['role']} with image {changes['image']}"
        if body.reason:
            message += f": {body.reason}"
    if to_state is State.FAILED:
        changes["last_error"] = f"aborted by {actor} while {state.value}"
    if to_state in KIND_FOR_STATE:
        changes["wake_at"] = None
        if to_state is not State.INSPECTING:
            changes["auto_provision"] = False
        image = changes.get("image", node.image)
        deployments.start(
            session,
            vault,
            node.id,
            kind=_kind_of(action, to_state),
            method=_method(session, to_state, image, settings),
            role=changes.get("role", node.role),
            image=image,
            timeout=settings.deploy_timeout,
            batch=batch,
        )
    elif action is Action.ABORT:
        deployments.end_live(session, node.id, DeploymentStatus.ABORTED, f"aborted by {actor}")
    with saving(session, node):
        timeline.transition(session, node, action, actor, message, changes=changes)
    return node


def _release_unwiped(session: Session, node: Node, body: ActionRequest, actor: str) -> Node:
    """Release ``node`` without wiping it, as the operator chose explicitly: it is
    ``ready`` at once, its disks (and whatever system is on them) as they were."""
    message = (
        f"released without a wipe, as {actor} chose explicitly (skip_wipe): its disks "
        "keep their data"
    )
    if body.reason:
        message += f": {body.reason}"
    deployments.end_live(session, node.id, DeploymentStatus.SUPERSEDED, "released without a wipe")
    changes = {"wake_at": None, "auto_provision": False}
    with saving(session, node):
        timeline.transition(session, node, Outcome.WIPE_SKIPPED, actor, message, changes=changes)
    return node


def _kind_of(action: Action, to_state: State) -> DeploymentKind:
    """The kind of deployment an action starts: its own (provision, reimage), or the
    one its new state's work begins with (a release wipes; a retry starts over)."""
    if action is Action.PROVISION:
        return DeploymentKind.PROVISION
    if action is Action.REIMAGE:
        return DeploymentKind.REIMAGE
    return KIND_FOR_STATE[to_state]


def inspector(settings: Settings) -> Method:
    """Who inspects: the agent from the inside when it is built, after the BMC is read;
    else the BMC alone."""
    return Method.AGENT if agent_built(settings) else Method.BMC


def _method(
    session: Session, to_state: State, image_name: str | None, settings: Settings
) -> Method:
    if to_state is State.INSPECTING:
        return inspector(settings)
    if to_state is State.WIPING:
        return wiper(settings) or Method.INSTALLER  # checked before: a wiper is there
    # An image with ``deploy: image`` is written by the agent; the others install
    # themselves.
    image = session.get(OsImage, image_name) if image_name else None
    return Method.AGENT if image is not None and image.deploy == "image" else Method.INSTALLER


def _failed_from(node: Node) -> State | None:
    return State(node.failed_from) if node.failed_from else None


def _deployment_choice(session: Session, node: Node, body: ActionRequest) -> dict[str, str]:
    role_name = body.role or node.role
    if role_name is None:
        raise Problem(
            422,
            'Provisioning needs a role: pass {"role": ...} or set the node\'s role.',
            errors=[{"field": "role", "message": "required"}],
        )
    role = session.get(Role, role_name)
    if role is None:
        raise Problem(
            422,
            f"Unknown role {role_name!r}; create it first (POST /api/v1/roles).",
            errors=[{"field": "role", "message": "unknown role"}],
        )
    image_name = body.image or (node.image if not body.role else None) or role.default_image
    if image_name is None:
        raise Problem(
            422,
            f'Provisioning needs an image: pass {{"image": ...}} or set role {role.name!r}\'s '
            "default_image.",
            errors=[{"field": "image", "message": "required"}],
        )
    if session.get(OsImage, image_name) is None:
        raise Problem(
            422,
            f"Unknown image {image_name!r}; see GET /api/v1/images.",
            errors=[{"field": "image", "message": "unknown image"}],
        )
    return {"role": role.name, "image": image_name}
