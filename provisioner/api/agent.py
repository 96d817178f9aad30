"""Node-facing routes of the deploy agent: what it posts (inventory, heartbeats, job
results) and what it downloads (its kernel and initramfs, the image it writes, the config
drive). No API token: the deployment's token in the path is the agent's only credential,
as for an installer's callbacks (docs/agent.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from provisioner.agent import build, protocol
from provisioner.agent.jobs import AgentJobs
from provisioner.api.deps import ServicesDep
from provisioner.api.problems import responses
from provisioner.boot import files
from provisioner.errors import Problem

router = APIRouter(tags=["boot (node-facing)"])

_TEXT = "text/plain; charset=utf-8"
_TOKEN = (
    (404, "No agent deployment has this token."),
    (410, "The deployment has ended; its token is spent."),
)
_FILE_SENT = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "The one byte range asked for."},
    304: {"description": "The node's copy is current."},
}
_PAST_END = (416, "The range starts past the end of the file.")
_FILE: dict[str, Any] = {
    "response_class": Response,
    "responses": {**_FILE_SENT, **responses(*_TOKEN, _PAST_END, 503)},
}
_AGENT_FILE: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        **_FILE_SENT,
        **responses((404, "This replica has no such agent build, or no such file."), _PAST_END),
    },
}
_AGENT_FILES = ("vmlinuz", "initrd.img")


async def _jobs(services: ServicesDep) -> AgentJobs:
    return services.agent


Jobs = Annotated[AgentJobs, Depends(_jobs)]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/agent/{token}/inventory",
    response_class=Response,
    responses={200: {"content": {_TEXT: {}}}, **responses(400, *_TOKEN, 413, 422, 503)},
)
async def inventory(request: Request, jobs: Jobs, token: str, body: protocol.Inventory) -> Response:
    """The machine's hardware as the agent sees it from the inside."""
    await run_in_threadpool(jobs.inventory, token, body, _client(request))
    return Response("ok\n", media_type=_TEXT)


@router.post(
    "/agent/{token}/heartbeat",
    response_class=Response,
    responses={
        200: {
            "description": "The agent's next command: wait N, deploy ..., wipe ..., "
            "reboot or poweroff.",
            "content": {_TEXT: {"schema": {"type": "string"}}},
        },
        **responses(400, *_TOKEN[:1], 413, 422, 503),
    },
)
async def heartbeat(jobs: Jobs, token: str, body: protocol.Heartbeat) -> Response:
    """The agent is alive; the answer is what it does next."""
    command = await run_in_threadpool(jobs.heartbeat, token, body)
    return Response(command + "\n", media_type=_TEXT)


@router.post(
    "/agent/{token}/result",
    response_class=Response,
    responses={
        200: {"content": {_TEXT: {}}},
        **responses(
            400, *_TOKEN, (409, "A result of another job than this deployment's."), 413, 422, 503
        ),
    },
)
async def result(request: Request, jobs: Jobs, token: str, body: protocol.Result) -> Response:
    """A finished job: an image written and read back, or disks wiped with evidence."""
    await run_in_threadpool(jobs.result, token, body, _client(request))
    return Response("ok\n", media_type=_TEXT)


@router.get("/agent/{token}/image", **_FILE)
async def image(request: Request, services: ServicesDep, token: str) -> Response:
    """The image the agent writes, raw or gzip-compressed raw."""
    prepared = await run_in_threadpool(services.agent.image, token)
    return files.respond(
        prepared.path.parent,
        None,
        prepared.path.name,
        request.headers,
        files.report_to(services.file_observer, token, _client(request), "image"),
    )


@router.get(
    "/agent/{token}/config-drive",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {}}}, **responses(*_TOKEN, 503)},
)
async def config_drive(request: Request, services: ServicesDep, token: str) -> Response:
    """The config drive's files as a tar, for the agent to put on a config-2 filesystem."""
    base = services.boot.base_url(str(request.base_url))
    data = await run_in_threadpool(services.agent.config_drive, token, base)
    return Response(data, media_type="application/x-tar")


@router.get("/boot/agent/{key}/{name}", **_AGENT_FILE)
@router.head("/boot/agent/{key}/{name}", **_AGENT_FILE)
async def agent_file(
    request: Request, services: ServicesDep, key: str, name: str, token: str | None = None
) -> Response:
    """The deploy agent's kernel and initramfs of build ``key`` (``provisioner agent
    build``), the one the boot script names: a machine's kernel and initramfs (whose
    modules must match that kernel) come from one build, whichever replica serves each."""
    root = services.settings.resolved_agent_dir
    agent = await run_in_threadpool(build.find, root, key)
    if agent is None:
        raise Problem(404, await run_in_threadpool(_no_build, root, key))
    if name not in _AGENT_FILES:
        raise Problem(404, f"No agent file {name!r}: a build has {' and '.join(_AGENT_FILES)}.")
    return files.respond(
        agent.directory,
        None,
        name,
        request.headers,
        files.report_to(services.file_observer, token, _client(request), f"agent/{key}/{name}"),
    )


def _no_build(root: Path, key: str) -> str:
    """Why this replica cannot serve build ``key`` and what to do: the replicas keep
    builds of their own, or this one has none."""
    own = build.current(root)
    has = f"serves build {own.key}" if own else "has no agent build"
    shown = key if len(key) <= 40 else f"{key[:40]}..."  # recognisable, not a long echo
    return (
        f"This replica has no agent build {shown!r} in {root} (it {has}); the machine's boot "
        "script came from a replica that has it. Build the agent into a directory all "
        "replicas share, PROVISIONER_AGENT_DIR, with `provisioner agent build`, then boot "
        "the machine again."
    )
